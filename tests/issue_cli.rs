//! The issuer from the command line, as an operator would use it: `passpulse certs dev`, then
//! `passpulse issue`, and the .pkpass checked with other tools (Python's zipfile to unpack,
//! `sha1sum` for the manifest, the `openssl` CLI for the signature).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::BIN;

fn passpulse(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn templates() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/templates")
        .display()
        .to_string()
}

#[test]
fn certs_dev_then_issue_makes_a_pass_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = passpulse(d, &["certs", "dev", "certs"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = templates();
    let attrs = [
        "first_name=Ada",
        "points=120",
        "tier=Gold",
        "programme_name=Pulse Rewards",
        "organization=Passpulse Coffee",
    ];
    let mut args = vec![
        "issue",
        "--template",
        "loyalty",
        "--templates",
        &t,
        "--customer",
        "C42",
        "--certs",
        "certs",
        "--out",
        "card.pkpass",
        "--serial",
        "SERIAL-1",
        "--web-service-url",
        "https://passes.example.test/wallet",
    ];
    for a in &attrs {
        args.extend(["--attr", a]);
    }
    let out = passpulse(d, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let unzip = Command::new("python3")
        .args(["-m", "zipfile", "-e", "card.pkpass", "card"])
        .current_dir(d)
        .status()
        .unwrap();
    assert!(unzip.success());
    let card = d.join("card");
    let pass: serde_json::Value =
        serde_json::from_slice(&std::fs::read(card.join("pass.json")).unwrap()).unwrap();
    assert_eq!(pass["serialNumber"], "SERIAL-1");
    assert_eq!(pass["passTypeIdentifier"], "pass.dev.passpulse");
    assert_eq!(pass["storeCard"]["primaryFields"][0]["value"], 120);
    assert_eq!(pass["barcodes"][0]["message"], "C42");
    assert!(pass["authenticationToken"].as_str().unwrap().len() >= 16);

    let manifest: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(card.join("manifest.json")).unwrap()).unwrap();
    let sums: String = manifest
        .iter()
        .map(|(f, h)| format!("{}  {f}\n", h.as_str().unwrap()))
        .collect();
    std::fs::write(card.join("sums"), sums).unwrap();
    let ok = Command::new("sha1sum")
        .args(["-c", "--quiet", "sums"])
        .current_dir(&card)
        .status()
        .unwrap();
    assert!(ok.success());
    let root = d.join("certs/root.pem");
    let verify = Command::new("openssl")
        .args([
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            "signature",
        ])
        .args([
            "-content",
            "manifest.json",
            "-purpose",
            "any",
            "-out",
            "/dev/null",
        ])
        .arg("-CAfile")
        .arg(&root)
        .current_dir(&card)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn issue_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(passpulse(d, &["certs", "dev", "certs"]).status.success());
    let t = templates();
    let issue = |template: &str| {
        let mut args = vec!["issue", "--template", template, "--templates", &t];
        args.extend("--customer C1 --certs certs --out x.pkpass".split(' '));
        passpulse(d, &args)
    };
    let out = issue("loyalty");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs the attribute"), "{err}");
    assert!(!d.join("x.pkpass").exists(), "nothing half-written");
    let out = issue("nope");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("template nope"));
}
