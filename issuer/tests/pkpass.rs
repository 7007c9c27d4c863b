//! Passes built from every shipped template with a development certificate chain, unpacked and
//! checked with independent tools: `sha1sum` for the manifest, the `openssl` command line for the
//! signature (chain to the root, signing time, WWDR included). Plus the refusals Wallet would
//! make, and certificates loaded from legacy-encrypted PKCS#12.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use passpulse_issuer::certs::{SigningIdentity, dev_chain};
use passpulse_issuer::pkpass::{PassRequest, build_pkpass, new_auth_token, pass_json};
use passpulse_issuer::template::Template;
use serde_json::{Value, json};

fn templates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/templates")
}

fn attrs() -> serde_json::Map<String, Value> {
    json!({
        "customer": "C0001234", "first_name": "Ada", "points": 1250, "tier": "Gold",
        "programme_name": "Pulse Rewards", "organization": "Passpulse Coffee",
        "offer_title": "20 % off your next visit", "discount_code": "PULSE-7Q2X",
        "expires": "2026-12-31T23:59:59Z", "expires_text": "31 Dec 2026",
        "event_name": "Winter Launch", "event_start": "2026-12-12T19:00:00Z", "venue": "Hall 2",
        "doors": "18:30", "seat": "B14", "ticket_id": "T-000981"
    })
    .as_object()
    .unwrap()
    .clone()
}

fn request<'a>(t: &'a Template) -> PassRequest<'a> {
    PassRequest {
        template: t,
        serial: format!("{}-0001", t.name),
        pass_type_id: "pass.dev.passpulse.test".into(),
        team_id: "DEVTEAM123".into(),
        web_service_url: Some("https://passes.example.test/wallet".into()),
        auth_token: Some(new_auth_token()),
        attrs: attrs(),
    }
}

fn unzip(bytes: &[u8], dir: &Path) -> Vec<String> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut names = Vec::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        let name = f.name().unwrap().to_string();
        std::fs::write(dir.join(&name), buf).unwrap();
        names.push(name);
    }
    names
}

fn run(dir: &Path, cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `openssl cms -verify` of `signature` over `manifest.json` in `dir`, chained to `root`.
fn cms_verify(dir: &Path, root: &str) -> (bool, String) {
    let args = "cms -verify -binary -inform DER -in signature -content manifest.json -CAfile";
    let mut a: Vec<&str> = args.split(' ').collect();
    a.extend([root, "-purpose", "any", "-out", "/dev/null"]);
    run(dir, "openssl", &a)
}

#[test]
fn every_template_makes_a_pass_that_openssl_verifies() {
    let chain = dev_chain("pass.dev.passpulse.test", "DEVTEAM123").unwrap();
    let certs = tempfile::tempdir().unwrap();
    chain.write_pem(certs.path()).unwrap();
    let root = certs.path().join("root.pem");
    let templates = Template::load_all(&templates_dir()).unwrap();
    assert!(
        ["coupon", "loyalty", "ticket"]
            .iter()
            .all(|t| templates.contains_key(*t))
    );
    for t in templates.values() {
        let bytes = build_pkpass(&request(t), &chain.identity).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let names = unzip(&bytes, dir.path());
        for f in ["pass.json", "manifest.json", "signature", "icon.png"] {
            assert!(names.iter().any(|n| n == f), "{}: {f} missing", t.name);
        }

        // every file but the manifest and the signature is in the manifest, with its SHA-1
        let manifest: serde_json::Map<String, Value> =
            serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap())
                .unwrap();
        let mut listed: Vec<&String> = manifest.keys().collect();
        listed.sort();
        let mut files: Vec<&String> = names
            .iter()
            .filter(|n| *n != "manifest.json" && *n != "signature")
            .collect();
        files.sort();
        assert_eq!(listed, files, "{}", t.name);
        let sums: String = manifest
            .iter()
            .map(|(f, h)| format!("{}  {f}\n", h.as_str().unwrap()))
            .collect();
        std::fs::write(dir.path().join("sums"), sums).unwrap();
        let (ok, out) = run(dir.path(), "sha1sum", &["-c", "sums"]);
        assert!(ok, "{}: {out}", t.name);

        // the signature verifies against the root, over the manifest, with the chain embedded
        let root_s = root.to_str().unwrap();
        let (ok, out) = cms_verify(dir.path(), root_s);
        assert!(ok, "{}: {out}", t.name);
        let (_, printed) = run(
            dir.path(),
            "openssl",
            &[
                "cms",
                "-cmsout",
                "-print",
                "-inform",
                "DER",
                "-in",
                "signature",
            ],
        );
        assert!(
            printed.contains("signingTime"),
            "{}: no signing time",
            t.name
        );
        let (_, certs_out) = run(
            dir.path(),
            "openssl",
            &[
                "pkcs7",
                "-inform",
                "DER",
                "-in",
                "signature",
                "-print_certs",
                "-noout",
            ],
        );
        assert!(
            certs_out.contains("WWDR"),
            "{}: WWDR not included: {certs_out}",
            t.name
        );

        // a changed manifest no longer verifies
        let mut m = std::fs::read(dir.path().join("manifest.json")).unwrap();
        m[5] ^= 1;
        std::fs::write(dir.path().join("manifest.json"), m).unwrap();
        let (ok, _) = cms_verify(dir.path(), root_s);
        assert!(!ok, "{}: a tampered manifest verified", t.name);

        // pass.json carries every required key, and numbers stay numbers
        let pass: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("pass.json")).unwrap()).unwrap();
        assert_eq!(pass["formatVersion"], 1);
        assert_eq!(pass["teamIdentifier"], "DEVTEAM123");
        assert!(pass["authenticationToken"].as_str().unwrap().len() >= 16);
        if t.name == "loyalty" {
            assert_eq!(pass["storeCard"]["primaryFields"][0]["value"], 1250);
            assert_eq!(pass["barcodes"][0]["message"], "C0001234");
            assert!(
                pass["storeCard"]["headerFields"][0]["changeMessage"]
                    .as_str()
                    .unwrap()
                    .contains("%@")
            );
        }
    }
}

#[test]
fn passes_wallet_would_refuse_are_refused_with_the_reason() {
    let templates = Template::load_all(&templates_dir()).unwrap();
    let t = &templates["loyalty"];
    let expect = |req: PassRequest<'_>, needle: &str| {
        let e = pass_json(&req).unwrap_err().to_string();
        assert!(e.contains(needle), "expected \"{needle}\" in: {e}");
    };
    let mut r = request(t);
    r.auth_token = Some("short".into());
    expect(r, "at least 16 characters");
    let mut r = request(t);
    r.auth_token = None;
    expect(r, "needs an authenticationToken");
    let mut r = request(t);
    r.attrs.remove("points");
    expect(r, "\"points\"");
    let mut no_icon = t.clone();
    no_icon.images.remove("icon.png");
    expect(request(&no_icon), "icon.png is missing");
    let mut bad_change = t.clone();
    bad_change.spec.fields.primary[0].change_message = Some("Points changed".into());
    expect(request(&bad_change), "must contain %@");
    let mut bad_version = pass_json(&request(t)).unwrap();
    bad_version["formatVersion"] = json!(2);
    let e = passpulse_issuer::pkpass::validate(&bad_version, &t.images)
        .unwrap_err()
        .to_string();
    assert!(e.contains("formatVersion must be 1"), "{e}");

    // a template without an icon does not even load
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        templates_dir().join("loyalty/template.json"),
        dir.path().join("template.json"),
    )
    .unwrap();
    let e = Template::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("icon.png is missing"), "{e}");
}

#[test]
fn certificates_load_from_pem_and_legacy_encrypted_pkcs12() {
    let chain = dev_chain("pass.dev.passpulse.test", "DEVTEAM123").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    chain.write_pem(d).unwrap();
    let from_pem = SigningIdentity::from_pem(
        &d.join("pass.pem"),
        &d.join("pass.key"),
        &d.join("wwdr.pem"),
    )
    .unwrap();
    assert_eq!(
        from_pem.cert.to_der().unwrap(),
        chain.identity.cert.to_der().unwrap()
    );

    // Keychain-style export: RC2-40 / 3DES, which OpenSSL 3 only reads with its legacy provider
    let (ok, out) = run(
        d,
        "openssl",
        &[
            "pkcs12",
            "-export",
            "-legacy",
            "-in",
            "pass.pem",
            "-inkey",
            "pass.key",
            "-out",
            "pass.p12",
            "-passout",
            "pass:secret",
        ],
    );
    assert!(ok, "{out}");
    let id =
        SigningIdentity::from_pkcs12(&d.join("pass.p12"), "secret", &d.join("wwdr.pem")).unwrap();
    assert_eq!(
        id.cert.to_der().unwrap(),
        chain.identity.cert.to_der().unwrap()
    );
    let e = SigningIdentity::from_pkcs12(&d.join("pass.p12"), "wrong", &d.join("wwdr.pem"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("wrong password"), "{e}");
    // a key that is not the certificate's is refused
    let other = dev_chain("pass.other", "X").unwrap();
    other.write_pem(&d.join("other")).unwrap();
    let e = SigningIdentity::from_pem(
        &d.join("pass.pem"),
        &d.join("other/pass.key"),
        &d.join("wwdr.pem"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("does not belong"), "{e}");
}
