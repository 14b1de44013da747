//! `trellisctl validate` as a user runs it: Istio's bookinfo samples pass
//! unchanged; a broken file reports every error with position, exit 1.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;
use trellis_e2e::harness::{bin, TempDir};

/// Runs `trellisctl validate -f FILES...`.
fn validate(files: &[&std::path::Path]) -> Result<std::process::Output> {
    Ok(Command::new(bin("trellisctl")?)
        .arg("validate")
        .arg("-f")
        .args(files)
        .output()?)
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/istio-bookinfo")
}

#[test]
fn accepts_istio_bookinfo_samples_unchanged() -> Result<()> {
    let dir = fixtures();
    let pairs = [
        [
            "destination-rule-all.yaml",
            "virtual-service-reviews-90-10.yaml",
        ],
        [
            "destination-rule-all-mtls.yaml",
            "virtual-service-reviews-jason-v2-v3.yaml",
        ],
        [
            "destination-rule-all.yaml",
            "virtual-service-ratings-test-delay.yaml",
        ],
        [
            "destination-rule-all.yaml",
            "virtual-service-ratings-test-abort.yaml",
        ],
    ];
    for files in pairs {
        let out = Command::new(bin("trellisctl")?)
            .arg("validate")
            .arg("-f")
            .args(files.iter().map(|f| dir.join(f)))
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{files:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("valid: 1 VirtualService, 4 DestinationRule"),
            "{stdout}"
        );
    }
    Ok(())
}

#[test]
fn every_example_validates() -> Result<()> {
    // Each example stands alone: validate them one at a time.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = validate(&[&path])?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{}: {stdout}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 3, "examples found: {checked}");
    Ok(())
}

#[test]
fn broken_file_reports_every_error_with_position_and_exits_1() -> Result<()> {
    let tmp = TempDir::new("validate")?;
    let broken = tmp.path().join("broken.yaml");
    // The 90/10 sample with three mistakes: weights sum to 95, an undefined
    // subset, a bad timeout; and a second document with a type error.
    let vs = std::fs::read_to_string(fixtures().join("virtual-service-reviews-90-10.yaml"))?
        .replace("weight: 10", "weight: 5")
        .replace("subset: v2", "subset: v9")
        .replace("  - route:", "  - timeout: 3 seconds\n    route:");
    let text = format!(
        "{}---\n{vs}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: ratings}}\nspec:\n  hosts: [ratings]\n  http:\n  - route:\n    - destination: {{host: ratings}}\n      weight: lots\n",
        std::fs::read_to_string(fixtures().join("destination-rule-all.yaml"))?.trim_end_matches("---\n")
    );
    std::fs::write(&broken, text)?;
    let out = validate(&[&broken])?;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let name = broken.display().to_string();
    // The parse error alone is reported when a document does not parse.
    assert!(
        stdout.contains(&format!(
            "{name}:90:15: spec.http[0].route[0].weight: invalid type: string \"lots\""
        )),
        "{stdout}"
    );

    // Fix the type error: now the validation errors all come out at once.
    let text = std::fs::read_to_string(&broken)?.replace("weight: lots", "weight: 100");
    std::fs::write(&broken, text)?;
    let out = validate(&[&broken])?;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    for want in [
        format!("{name}:71:14: spec.http[0].timeout: invalid duration \"3 seconds\""),
        format!("{name}:73:5: spec.http[0].route: weights sum to 95, expected 100"),
        format!(
            "{name}:79:17: spec.http[0].route[1].destination.subset: subset \"v9\" is not defined"
        ),
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(&want)),
            "missing {want}\n{stdout}"
        );
    }
    assert_eq!(lines.len(), 3, "{stdout}");
    Ok(())
}
