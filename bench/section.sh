# Shared by the bench scripts: put_section NAME SECTION OUT replaces the part
# of OUT between the "<!-- NAME: begin" and "<!-- NAME: end" markers with the
# file SECTION (which carries the markers); appends it when OUT has none.
put_section() {
    local name=$1 section=$2 out=$3
    if [ -f "$out" ] && grep -q "$name: begin" "$out"; then
        awk -v section="$section" -v begin="$name: begin" -v end="$name: end" '
            index($0, begin) { while ((getline line < section) > 0) print line; skip = 1; next }
            index($0, end) { skip = 0; next }
            !skip { print }' "$out" > "$out.tmp"
        mv "$out.tmp" "$out"
    elif [ -f "$out" ]; then
        { echo; cat "$section"; } >> "$out"
    else
        { echo "# Benchmarks"; echo; cat "$section"; } > "$out"
    fi
}
