//! Tests of the strict chunked framing check: what RFC 9112 allows passes
//! at every split of the stream; each malformed size line fails at its
//! offending byte.

use super::*;

/// Feeds `stream` whole and split at every point: the outcome is the same,
/// and a failure names the same offset.
fn check(stream: &[u8]) -> Result<(), (usize, BadChunk)> {
    let whole = Framing::judge(stream, None);
    for split in 1..stream.len() {
        assert_eq!(
            Framing::judge(stream, Some(split)),
            whole,
            "split at {split}"
        );
    }
    whole
}

fn fails_at(stream: &[u8], offending: &[u8]) -> BadChunk {
    let at = stream
        .windows(offending.len())
        .position(|w| w == offending)
        .expect("the offending bytes are in the stream");
    match check(stream) {
        Err((n, e)) => {
            assert_eq!(n, at, "failed at {n}, not at {at}: {e}");
            e
        }
        Ok(()) => panic!("accepted: {:?}", String::from_utf8_lossy(stream)),
    }
}

const CHUNKED: &str = "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";

#[test]
fn well_formed_requests_pass_at_every_split() {
    let stream = [
        // Leading empty line, no body.
        "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        // A Content-Length body that looks like bad chunk framing.
        "POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 3, 3\r\n\r\n5 \n",
        // Chunked with extensions (BWS around `;` and `=`, a quoted value
        // with an escape), upper-case hex, and a trailer field.
        "POST /c HTTP/1.1\r\nHost: a\r\ntransfer-ENCODING: gzip, chunked\r\n\r\n",
        "5\r\nhello\r\n",
        "A;name=value\r\n0123456789\r\n",
        "3 ; x = \"q\\\"\" ;y\r\nabc\r\n",
        "0\r\nx-trailer: 1\r\n\r\n",
        // Bare LF ends head lines (hyper accepts it), then an empty body.
        "GET /lf HTTP/1.1\nHost: a\n\n",
        CHUNKED,
        "0\r\n\r\n",
    ]
    .concat();
    assert_eq!(check(stream.as_bytes()), Ok(()));
}

#[test]
fn whitespace_after_the_size_needs_an_extension() {
    let stream = format!("{CHUNKED}5 \r\nhello\r\n0\r\n\r\n");
    let e = fails_at(stream.as_bytes(), b"\r\nhello");
    assert!(e.0.contains("whitespace"), "{e}");
    let stream = format!("{CHUNKED}5\t\t;ext\r\nhello\r\n0\r\n\r\n");
    assert_eq!(check(stream.as_bytes()), Ok(()));
}

#[test]
fn malformed_size_lines_fail_at_the_offending_byte() {
    for (body, offending) in [
        ("\r\n0\r\n\r\n", "\r\n0"),        // empty size line
        (" 5\r\nhello\r\n", " 5"),         // leading whitespace
        ("5\nhello\r\n", "\nhello"),       // bare LF
        ("5\r\r\nhello\r\n", "\r\nhello"), // CR not followed by LF
        ("0x5\r\nhello\r\n", "x5"),        // not hex
        ("5;\r\nhello\r\n", "\r\nhello"),  // extension without a name
        ("5;a=\r\nhello\r\n", "\r\nhello"),
        ("5;a\u{1}\r\nhello\r\n", "\u{1}"),
        ("5;a=\"x\r\nhello\r\n", "\r\nhello"), // unclosed quote
        ("5;a \r\nhello\r\n", "\r\nhello"),    // whitespace before CRLF
        ("10000000000000000\r\n", "0\r\n"),    // over 64 bits
    ] {
        let stream = format!("{CHUNKED}{body}");
        let at = CHUNKED.len() + body.find(offending).expect("in the body");
        match check(stream.as_bytes()) {
            Err((n, _)) => assert_eq!(n, at, "{body:?}"),
            Ok(()) => panic!("accepted {body:?}"),
        }
    }
}

#[test]
fn chunk_data_and_trailers_end_with_crlf() {
    fails_at(format!("{CHUNKED}5\r\nhelloX\r\n").as_bytes(), b"X\r\n");
    fails_at(format!("{CHUNKED}0\r\nx: 1\nmore").as_bytes(), b"\nmore");
    fails_at(format!("{CHUNKED}0\r\n\rX").as_bytes(), b"X");
}

#[test]
fn the_next_request_is_framed_after_a_chunked_body() {
    let stream = format!("{CHUNKED}0\r\n\r\n{CHUNKED}5 \r\nhello\r\n");
    let at = stream.rfind("\r\nhello").expect("present");
    assert_eq!(check(stream.as_bytes()).map_err(|(n, _)| n), Err(at));
}

#[test]
fn an_http2_connection_passes_untouched() {
    let mut stream = PREFACE.to_vec();
    stream.extend_from_slice(b"5 \r\n\x00\x00\x00anything");
    assert_eq!(check(&stream), Ok(()));
    // A request that starts like the preface but is not it is HTTP/1.
    let stream = b"PRI /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\n";
    assert!(check(stream).is_err());
}

#[tokio::test]
async fn the_reader_delivers_the_bytes_before_the_error_then_fails() {
    use tokio::io::AsyncReadExt;
    let stream = format!("{CHUNKED}5 \r\nhello\r\n0\r\n\r\n");
    let mut reader = StrictFraming::new(stream.as_bytes());
    let mut buf = vec![0; 4096];
    let n = reader.read(&mut buf).await.expect("the head and `5 `");
    assert_eq!(&buf[..n], format!("{CHUNKED}5 ").as_bytes());
    let e = reader.read(&mut buf).await.expect_err("then the error");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.get_ref().is_some_and(|e| e.is::<BadChunk>()), "{e}");
}
