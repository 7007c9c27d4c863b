//! Google Wallet save links: the JWT's claims as Google expects them, and its RS256 signature
//! verified with the `openssl` command line against the service account's public key.

use std::process::Command;

use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use passpulse_issuer::google::{SAVE_URL, ServiceAccount, loyalty_object, save_jwt, save_url};
use serde_json::{Value, json};

fn b64url_decode(s: &str) -> Vec<u8> {
    let mut std = s.replace('-', "+").replace('_', "/");
    while !std.len().is_multiple_of(4) {
        std.push('=');
    }
    openssl::base64::decode_block(&std).unwrap()
}

#[test]
fn save_links_carry_the_claims_and_a_signature_openssl_verifies() {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let pem = String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let file = json!({
        "type": "service_account",
        "client_email": "issuer@passpulse-dev.iam.gserviceaccount.com",
        "private_key": pem,
    });
    let sa = ServiceAccount::from_json(file.to_string().as_bytes()).unwrap();
    let attrs = json!({"customer": "C42", "first_name": "Ada", "points": 120});
    let object = loyalty_object(
        "3388000000022",
        "loyalty",
        "SERIAL-1",
        attrs.as_object().unwrap(),
    );
    assert_eq!(object["id"], "3388000000022.SERIAL-1");
    assert_eq!(object["loyaltyPoints"]["balance"]["int"], 120);
    let jwt = save_jwt(
        &sa,
        &["https://passes.example.test".into()],
        json!({ "loyaltyObjects": [object] }),
        1_790_000_000,
    )
    .unwrap();
    let url = save_url(&jwt);
    assert!(url.starts_with(SAVE_URL));
    assert!(!jwt.contains(['+', '/', '=']), "base64url without padding");

    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&b64url_decode(parts[0])).unwrap();
    assert_eq!(header, json!({"alg": "RS256", "typ": "JWT"}));
    let claims: Value = serde_json::from_slice(&b64url_decode(parts[1])).unwrap();
    assert_eq!(claims["aud"], "google");
    assert_eq!(claims["typ"], "savetowallet");
    assert_eq!(
        claims["iss"],
        "issuer@passpulse-dev.iam.gserviceaccount.com"
    );
    assert_eq!(claims["origins"][0], "https://passes.example.test");
    assert_eq!(claims["payload"]["loyaltyObjects"][0]["accountId"], "C42");

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pub.pem"), key.public_key_to_pem().unwrap()).unwrap();
    std::fs::write(d.join("input"), format!("{}.{}", parts[0], parts[1])).unwrap();
    std::fs::write(d.join("sig"), b64url_decode(parts[2])).unwrap();
    let verify = |input: &str| {
        Command::new("openssl")
            .args([
                "dgst",
                "-sha256",
                "-verify",
                "pub.pem",
                "-signature",
                "sig",
                input,
            ])
            .current_dir(d)
            .output()
            .unwrap()
    };
    let out = verify("input");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(d.join("forged"), format!("{}.{}x", parts[0], parts[1])).unwrap();
    assert!(!verify("forged").status.success());

    // a key file without a key is refused with the reason
    let e = ServiceAccount::from_json(br#"{"client_email":"x"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("private_key"), "{e}");
}
