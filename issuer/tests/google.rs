//! Google Wallet: the save link's JWT as Google expects it (claims, RS256 signature verified
//! against the service account's public key), one object of the template's real Google type
//! carrying the same barcode, texts and validity as the Apple pass.json; save/delete callbacks
//! and REST updates for every type, against a real nats-server and a local stand-in for Google.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sign::Verifier;
use passpulse_engine::DecodedBatch;
use passpulse_engine::event::decode_line;
use passpulse_ingest::{BusConfig, ManagedNats, connect, ensure_streams};
use passpulse_issuer::google::{
    GoogleError, GoogleKind, SAVE_URL, ServiceAccount, class_suffix, pass_object, save_jwt,
    save_url,
};
use passpulse_issuer::google_api::GoogleApi;
use passpulse_issuer::google_callback::{CallbackSigner, RootKeys, message};
use passpulse_issuer::lifecycle::Lifecycle;
use passpulse_issuer::pkpass::{PassRequest, pass_json};
use passpulse_issuer::push::RecordingSender;
use passpulse_issuer::registry::Registry;
use passpulse_issuer::service::{GOOGLE_DEVICE, GoogleSettings, NewPass, now_ms};
use passpulse_issuer::{Issuer, IssuerConfig, Template};
use serde_json::{Map, Value, json};

const ISSUER_ID: &str = "3388000000022";
const ORIGIN: &str = "https://passes.example.test";

fn templates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/templates")
}

fn template(name: &str) -> Template {
    Template::load(&templates_dir().join(name)).unwrap()
}

fn b64url_decode(s: &str) -> Vec<u8> {
    let mut std = s.replace('-', "+").replace('_', "/");
    while !std.len().is_multiple_of(4) {
        std.push('=');
    }
    openssl::base64::decode_block(&std).unwrap()
}

fn service_account() -> (ServiceAccount, PKey<Private>) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let pem = String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let file = json!({
        "type": "service_account",
        "client_email": "issuer@passpulse-dev.iam.gserviceaccount.com",
        "private_key": pem,
    });
    (
        ServiceAccount::from_json(file.to_string().as_bytes()).unwrap(),
        key,
    )
}

/// The claims of `jwt` after checking its RS256 signature with `key`'s public half.
fn verified_claims(jwt: &str, key: &PKey<Private>) -> Value {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&b64url_decode(parts[0])).unwrap();
    assert_eq!(header, json!({"alg": "RS256", "typ": "JWT"}));
    let public = PKey::public_key_from_pem(&key.public_key_to_pem().unwrap()).unwrap();
    let mut v = Verifier::new(MessageDigest::sha256(), &public).unwrap();
    v.update(format!("{}.{}", parts[0], parts[1]).as_bytes())
        .unwrap();
    assert!(
        v.verify(&b64url_decode(parts[2])).unwrap(),
        "RS256 signature"
    );
    serde_json::from_slice(&b64url_decode(parts[1])).unwrap()
}

fn attrs(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// The Apple pass.json and the verified claims of the Google save link of one pass.
fn both_wallets(t: &Template, serial: &str, a: &Map<String, Value>) -> (Value, Value) {
    let apple = pass_json(&PassRequest {
        template: t,
        serial: serial.into(),
        pass_type_id: "pass.test.google".into(),
        team_id: "TEAM000001".into(),
        web_service_url: None,
        auth_token: None,
        attrs: a.clone(),
    })
    .unwrap();
    let (sa, key) = service_account();
    let object = pass_object(ISSUER_ID, class_suffix(t, "loyalty"), t, serial, a).unwrap();
    let jwt = save_jwt(&sa, &[ORIGIN.into()], object.payload(), 1_790_000_000).unwrap();
    let claims = verified_claims(&jwt, &key);
    assert_eq!(claims["aud"], "google");
    assert_eq!(claims["typ"], "savetowallet");
    assert_eq!(claims["origins"], json!([ORIGIN]));
    (apple, claims)
}

/// The only object of the payload, which must have exactly the one key `key`.
fn only_object<'a>(claims: &'a Value, key: &str) -> &'a Value {
    let payload = claims["payload"].as_object().unwrap();
    assert_eq!(
        payload.keys().collect::<Vec<_>>(),
        [key],
        "payload: {payload:?}"
    );
    let list = payload[key].as_array().unwrap();
    assert_eq!(list.len(), 1);
    &list[0]
}

/// `(id, header, body)` of every text module.
fn texts(o: &Value) -> Vec<(String, String, String)> {
    o["textModulesData"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    let s = |k: &str| m[k].as_str().unwrap().to_string();
                    (s("id"), s("header"), s("body"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn t3(id: &str, header: &str, body: &str) -> (String, String, String) {
    (id.into(), header.into(), body.into())
}

fn localized(v: &Value) -> &str {
    v["defaultValue"]["value"].as_str().unwrap()
}

#[test]
fn save_links_carry_the_claims_and_a_signature_openssl_verifies() {
    let (sa, key) = service_account();
    let t = template("loyalty");
    let a = attrs(json!({
        "customer": "C42", "first_name": "Ada", "points": 120, "tier": "Gold",
        "programme_name": "Pulse", "organization": "Pulse Coffee",
    }));
    let object = pass_object(ISSUER_ID, "loyalty", &t, "SERIAL-1", &a).unwrap();
    let jwt = save_jwt(&sa, &[ORIGIN.into()], object.payload(), 1_790_000_000).unwrap();
    let url = save_url(&jwt);
    assert!(url.starts_with(SAVE_URL));
    assert!(!jwt.contains(['+', '/', '=']), "base64url without padding");
    let claims = verified_claims(&jwt, &key);
    assert_eq!(
        claims["iss"],
        "issuer@passpulse-dev.iam.gserviceaccount.com"
    );
    assert_eq!(claims["iat"], 1_790_000_000);

    let parts: Vec<&str> = jwt.split('.').collect();
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

#[test]
fn a_coupon_is_an_offer_object_whose_barcode_is_the_discount_code() {
    let t = template("coupon");
    let a = attrs(json!({
        "customer": "C42", "organization": "Pulse Coffee", "offer_title": "25% off any drink",
        "discount_code": "SPRING-25", "expires": "2026-06-30T23:59:59+02:00",
        "expires_text": "30 June",
    }));
    let (apple, claims) = both_wallets(&t, "CPN-1", &a);
    let o = only_object(&claims, "offerObjects");
    assert_eq!(o["id"], format!("{ISSUER_ID}.CPN-1"));
    assert_eq!(o["classId"], format!("{ISSUER_ID}.coupon"));
    assert_eq!(o["state"], "ACTIVE");
    let barcode = &apple["barcodes"][0];
    assert_eq!(barcode["message"], "SPRING-25", "Apple encodes the code");
    assert_eq!(
        o["barcode"],
        json!({"type": "CODE_128", "value": "SPRING-25", "alternateText": "SPRING-25"})
    );
    assert_eq!(o["barcode"]["value"], barcode["message"]);
    assert_eq!(o["barcode"]["alternateText"], barcode["altText"]);
    assert!(
        !claims.to_string().contains("C42"),
        "the customer id is not what a till scans: {claims}"
    );
    assert_eq!(
        o["validTimeInterval"],
        json!({"end": {"date": "2026-06-30T23:59:59+02:00"}})
    );
    assert_eq!(
        o["validTimeInterval"]["end"]["date"],
        apple["expirationDate"]
    );
    assert_eq!(
        texts(o),
        [
            t3("offer", "OFFER", "25% off any drink"),
            t3("code", "CODE", "SPRING-25"),
            t3("expires", "VALID UNTIL", "30 June"),
            t3(
                "terms",
                "Terms",
                "One use per customer. Show this pass at the till."
            ),
        ]
    );
    for k in ["loyaltyPoints", "accountId", "seatInfo", "ticketHolderName"] {
        assert!(o.get(k).is_none(), "{k} on an offer object: {o}");
    }
}

#[test]
fn a_ticket_is_an_event_ticket_object_with_its_holder_and_seat() {
    let t = template("ticket");
    let a = attrs(json!({
        "customer": "C7", "organization": "Pulse Live", "event_name": "Night Shift",
        "event_start": "2026-09-12T20:00:00Z", "venue": "Hall 2", "doors": "19:00",
        "seat": "R12-S4", "first_name": "Grace", "ticket_id": "TKT-0042-9F",
    }));
    let (apple, claims) = both_wallets(&t, "TKT-1", &a);
    let o = only_object(&claims, "eventTicketObjects");
    assert_eq!(o["id"], format!("{ISSUER_ID}.TKT-1"));
    assert_eq!(o["classId"], format!("{ISSUER_ID}.ticket"));
    assert_eq!(o["state"], "ACTIVE");
    assert_eq!(apple["barcodes"][0]["message"], "TKT-0042-9F");
    assert_eq!(
        o["barcode"],
        json!({"type": "QR_CODE", "value": "TKT-0042-9F", "alternateText": "TKT-0042-9F"})
    );
    assert_eq!(o["ticketHolderName"], "Grace");
    assert_eq!(localized(&o["seatInfo"]["seat"]), "R12-S4");
    assert_eq!(o["seatInfo"]["seat"]["defaultValue"]["language"], "en");
    assert_eq!(
        texts(o),
        [
            t3("event", "EVENT", "Night Shift"),
            t3("venue", "VENUE", "Hall 2"),
            t3("doors", "DOORS", "19:00"),
        ]
    );
    // Apple's relevantDate says when to show the pass, not until when it is valid
    assert_eq!(apple["relevantDate"], "2026-09-12T20:00:00Z");
    assert!(apple.get("expirationDate").is_none());
    assert!(o.get("validTimeInterval").is_none(), "{o}");
}

#[test]
fn a_loyalty_card_is_a_loyalty_object_with_points_and_member() {
    let t = template("loyalty");
    let a = attrs(json!({
        "customer": "C42", "first_name": "Ada", "points": 120, "tier": "Gold",
        "programme_name": "Pulse", "organization": "Pulse Coffee",
    }));
    let (apple, claims) = both_wallets(&t, "LOY-1", &a);
    let o = only_object(&claims, "loyaltyObjects");
    assert_eq!(o["id"], format!("{ISSUER_ID}.LOY-1"));
    assert_eq!(o["classId"], format!("{ISSUER_ID}.loyalty"));
    assert_eq!(apple["barcodes"][0]["message"], "C42");
    assert_eq!(
        o["barcode"],
        json!({"type": "QR_CODE", "value": "C42", "alternateText": "C42"})
    );
    assert_eq!(
        o["loyaltyPoints"],
        json!({"label": "POINTS", "balance": {"int": 120}})
    );
    assert_eq!(o["accountId"], "C42");
    assert_eq!(o["accountName"], "Ada");
    assert_eq!(
        texts(o),
        [
            t3("tier", "TIER", "Gold"),
            t3(
                "terms",
                "Terms",
                "Points are credited within 24 hours of a purchase and expire after 12 months."
            ),
        ]
    );
    assert!(o.get("validTimeInterval").is_none());
    // a non-integer balance is still the balance Apple shows
    let mut b = a.clone();
    b.insert("points".into(), json!("1.5k"));
    let (_, claims) = both_wallets(&t, "LOY-2", &b);
    assert_eq!(
        only_object(&claims, "loyaltyObjects")["loyaltyPoints"]["balance"],
        json!({"string": "1.5k"})
    );
}

#[test]
fn hostile_customer_attributes_are_plain_json_strings() {
    let t = template("loyalty");
    let html = "<script>alert(\"x\")</script><b>Ada</b>";
    let crlf = "Gold\r\nX-Injected: yes\r\n\r\n";
    let formula = "=1+2";
    let a = attrs(json!({
        "customer": "C\"42\\", "first_name": html, "points": formula, "tier": crlf,
        "programme_name": "{braces} & <amps>", "organization": "Pulse Coffee",
    }));
    let (apple, claims) = both_wallets(&t, "LOY-X", &a);
    let o = only_object(&claims, "loyaltyObjects");
    assert_eq!(o["accountName"], html);
    assert_eq!(o["accountId"], "C\"42\\");
    assert_eq!(o["barcode"]["value"], "C\"42\\");
    assert_eq!(o["barcode"]["value"], apple["barcodes"][0]["message"]);
    assert_eq!(o["loyaltyPoints"]["balance"], json!({"string": formula}));
    assert_eq!(texts(o)[0], t3("tier", "TIER", crlf));

    let t = template("coupon");
    let a = attrs(json!({
        "organization": "Pulse", "offer_title": html, "discount_code": formula,
        "expires": "2026-06-30T23:59:59Z", "expires_text": crlf,
    }));
    let (apple, claims) = both_wallets(&t, "CPN-X", &a);
    let o = only_object(&claims, "offerObjects");
    assert_eq!(o["barcode"]["value"], formula);
    assert_eq!(o["barcode"]["value"], apple["barcodes"][0]["message"]);
    assert_eq!(
        texts(o)[..3],
        [
            t3("offer", "OFFER", html),
            t3("code", "CODE", formula),
            t3("expires", "VALID UNTIL", crlf),
        ]
    );
}

/// A template directory with `template.json` = `spec` and an icon.
fn temp_template(dir: &Path, name: &str, spec: Value) -> Result<Template, String> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(templates_dir().join("coupon/icon.png"), d.join("icon.png")).unwrap();
    std::fs::write(d.join("template.json"), spec.to_string()).unwrap();
    Template::load(&d).map_err(|e| e.to_string())
}

#[test]
fn generic_passes_are_generic_objects_and_boarding_passes_have_none() {
    let dir = tempfile::tempdir().unwrap();
    let t = temp_template(
        dir.path(),
        "member-note",
        json!({
            "style": "generic", "description": "Note for {first_name}",
            "organizationName": "Pulse", "logoText": "Pulse Club",
            "googleClass": "club_note",
            "fields": {
                "primary": [{ "key": "msg", "label": "NOTE", "value": "{note}" }],
                "back": [{ "key": "since", "label": "Since", "value": "{since}", "google": "subheader" }]
            },
            "barcode": { "format": "PKBarcodeFormatPDF417", "message": "{customer}" }
        }),
    )
    .unwrap();
    let a = attrs(json!({"customer": "C1", "first_name": "Ada", "note": "Hi", "since": "2024"}));
    let (apple, claims) = both_wallets(&t, "GEN-1", &a);
    let o = only_object(&claims, "genericObjects");
    assert_eq!(o["classId"], format!("{ISSUER_ID}.club_note"));
    assert_eq!(localized(&o["cardTitle"]), "Pulse Club");
    assert_eq!(localized(&o["header"]), "Note for Ada");
    assert_eq!(localized(&o["subheader"]), "2024");
    assert_eq!(o["barcode"], json!({"type": "PDF_417", "value": "C1"}));
    assert_eq!(o["barcode"]["value"], apple["barcodes"][0]["message"]);
    assert_eq!(texts(o), [t3("msg", "NOTE", "Hi")]);

    let boarding = temp_template(
        dir.path(),
        "flight",
        json!({
            "style": "boardingPass", "description": "Flight", "organizationName": "Pulse Air",
        }),
    )
    .unwrap();
    let e = pass_object(ISSUER_ID, "flight", &boarding, "BP-1", &a).unwrap_err();
    assert!(matches!(e, GoogleError::Unsupported { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("boardingPass") && e.contains("Apple Wallet only"),
        "{e}"
    );
    assert_eq!(GoogleKind::for_style("boardingPass"), None);

    // a field sent to a slot its Google type does not have is refused when the template loads
    let e = temp_template(
        dir.path(),
        "bad-coupon",
        json!({
            "style": "coupon", "description": "x", "organizationName": "x",
            "fields": { "primary": [{ "key": "seat", "value": "x", "google": "seat" }] }
        }),
    )
    .unwrap_err();
    assert!(e.contains("\"seat\"") && e.contains("offerObject"), "{e}");
    let e = temp_template(
        dir.path(),
        "bad-ticket",
        json!({
            "style": "eventTicket", "description": "x", "organizationName": "x",
            "fields": { "primary": [{ "key": "p", "value": "x", "google": "loyaltyPoints" }] }
        }),
    )
    .unwrap_err();
    assert!(
        e.contains("ticketHolderName"),
        "names the allowed ones: {e}"
    );
    // an expiry Google cannot read is named
    let t = template("coupon");
    let a = attrs(json!({
        "organization": "P", "offer_title": "x", "discount_code": "D",
        "expires": "next week", "expires_text": "soon",
    }));
    let e = pass_object(ISSUER_ID, "coupon", &t, "CPN-2", &a)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("expirationDate") && e.contains("next week"),
        "{e}"
    );
}

/// What the fake Google server saw: token assertions and `(resource, object id, body)` patches.
#[derive(Default)]
struct GoogleSeen {
    patches: Vec<(String, String, Value)>,
}

type Seen = Arc<parking_lot::Mutex<GoogleSeen>>;

/// A local stand-in for Google's token endpoint and the Wallet REST API (every object type).
async fn fake_google() -> (String, Seen) {
    use axum::extract::{Path as UrlPath, State};
    use axum::routing::{patch, post};
    let seen = Seen::default();
    let app = axum::Router::new()
        .route(
            "/token",
            post(|| async { axum::Json(json!({"access_token": "tok-1", "expires_in": 3600})) }),
        )
        .route(
            "/v1/{resource}/{id}",
            patch(
                |State(s): State<Seen>,
                 UrlPath((resource, id)): UrlPath<(String, String)>,
                 axum::Json(body): axum::Json<Value>| async move {
                    s.lock().patches.push((resource, id, body));
                    axum::Json(json!({}))
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_and_updates_use_each_passs_google_type() {
    let (google_url, seen) = fake_google().await;
    let (sa, _) = service_account();
    let signer = CallbackSigner::new(now_ms() + 86_400_000).unwrap();
    let google = GoogleSettings {
        service_account: sa.clone(),
        issuer_id: ISSUER_ID.into(),
        class: "loyalty".into(),
        origins: vec![ORIGIN.into()],
        root_keys: Some(RootKeys::from_json(signer.root_keys_json().unwrap().as_bytes()).unwrap()),
        api: Some(Arc::new(GoogleApi::new(
            sa,
            &format!("{google_url}/v1"),
            &format!("{google_url}/token"),
        ))),
    };

    let dir = tempfile::tempdir().unwrap();
    let nats = ManagedNats::start(&dir.path().join("nats")).await.unwrap();
    let js = async_nats::jetstream::new(connect(nats.url()).await.unwrap());
    let bus = BusConfig::default();
    let stream = ensure_streams(&js, &bus).await.unwrap();
    let registry = Registry::open(&js).await.unwrap();
    let templates: BTreeMap<String, Template> = Template::load_all(&templates_dir()).unwrap();
    let cfg = IssuerConfig {
        google: Some(google),
        ..IssuerConfig::development(ORIGIN, "pass.test.google", "TEAM000001", templates).unwrap()
    };
    let issuer = Issuer::new(
        cfg,
        registry.clone(),
        Lifecycle::new(js, bus),
        RecordingSender::new(),
    );

    let passes = [
        (
            "coupon",
            json!({"organization": "Pulse", "offer_title": "25% off", "discount_code": "SPRING-25",
                   "expires": "2026-06-30T23:59:59Z", "expires_text": "30 June"}),
            json!({"offer_title": "30% off"}),
            "offerObject",
        ),
        (
            "ticket",
            json!({"organization": "Pulse Live", "event_name": "Night Shift",
                   "event_start": "2026-09-12T20:00:00Z", "venue": "Hall 2", "doors": "19:00",
                   "seat": "R12-S4", "first_name": "Grace", "ticket_id": "TKT-1"}),
            json!({"seat": "R1-S1"}),
            "eventTicketObject",
        ),
        (
            "loyalty",
            json!({"first_name": "Ada", "points": 10, "tier": "Silver",
                   "programme_name": "Pulse", "organization": "Pulse Coffee"}),
            json!({"points": 250}),
            "loyaltyObject",
        ),
    ];
    let mut serials = Vec::new();
    for (i, (program, attributes, changes, resource)) in passes.iter().enumerate() {
        let issued = issuer
            .issue(NewPass {
                program: (*program).into(),
                customer: format!("C{i}"),
                attributes: serde_json::from_value(attributes.clone()).unwrap(),
                source: Some("web".into()),
                campaign: None,
            })
            .await
            .unwrap();
        let serial = issued.serial.clone();
        let jwt = issued
            .google_save_url
            .unwrap()
            .strip_prefix(SAVE_URL)
            .unwrap()
            .to_string();
        let claims: Value =
            serde_json::from_slice(&b64url_decode(jwt.split('.').nth(1).unwrap())).unwrap();
        let key = format!("{resource}s");
        let o = only_object(&claims, &key);
        let object_id = format!("{ISSUER_ID}.{serial}");
        assert_eq!(o["id"], object_id);
        let class = o["classId"].as_str().unwrap().to_string();
        assert_eq!(class, format!("{ISSUER_ID}.{program}"));

        let save = signer
            .sign(
                &message(
                    &class,
                    &object_id,
                    "save",
                    now_ms() + 600_000,
                    &format!("n-{i}"),
                ),
                ISSUER_ID,
            )
            .unwrap();
        assert_eq!(
            issuer.google_callback(save.as_bytes()).await.unwrap(),
            "saved"
        );
        assert!(registry.registration(&serial, GOOGLE_DEVICE).is_some());

        let rep = issuer
            .update(&serial, serde_json::from_value(changes.clone()).unwrap())
            .await
            .unwrap();
        assert_eq!(rep.google.as_deref(), Some("patched"), "{program}");
        let (res, id, body) = seen.lock().patches.last().cloned().unwrap();
        assert_eq!((res.as_str(), id.as_str()), (*resource, object_id.as_str()));
        assert_eq!(body["classId"], class.as_str());
        serials.push(serial);
    }
    {
        let seen = seen.lock();
        assert_eq!(seen.patches.len(), 3);
        // the patched objects carry the changed content, in each type's place
        assert_eq!(seen.patches[0].2["textModulesData"][0]["body"], "30% off");
        assert_eq!(seen.patches[0].2["barcode"]["value"], "SPRING-25");
        assert_eq!(
            seen.patches[1].2["seatInfo"]["seat"]["defaultValue"]["value"],
            "R1-S1"
        );
        assert_eq!(seen.patches[2].2["loyaltyPoints"]["balance"]["int"], 250);
    }

    // a ticket deleted from Google Wallet is uninstalled, and no longer patched
    let ticket = &serials[1];
    let del = signer
        .sign(
            &message(
                &format!("{ISSUER_ID}.ticket"),
                &format!("{ISSUER_ID}.{ticket}"),
                "del",
                now_ms() + 600_000,
                "n-del",
            ),
            ISSUER_ID,
        )
        .unwrap();
    assert_eq!(
        issuer.google_callback(del.as_bytes()).await.unwrap(),
        "deleted"
    );
    assert!(registry.registration(ticket, GOOGLE_DEVICE).is_none());
    let changes = serde_json::from_value(json!({"seat": "R2-S2"})).unwrap();
    assert_eq!(issuer.update(ticket, changes).await.unwrap().google, None);

    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut batch = DecodedBatch::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        decode_line(&m.payload, 1, seq, &mut batch).unwrap();
    }
    let lifecycle: Vec<(&str, Option<&str>)> = batch
        .iter()
        .filter(|e| e.platform.map(|p| p.as_str()) == Some("google"))
        .filter(|e| e.kind.as_str().starts_with("pass."))
        .map(|e| (e.kind.as_str(), e.pass))
        .collect();
    assert_eq!(
        lifecycle,
        [
            ("pass.installed", Some(serials[0].as_str())),
            ("pass.installed", Some(serials[1].as_str())),
            ("pass.installed", Some(serials[2].as_str())),
            ("pass.uninstalled", Some(serials[1].as_str())),
        ]
    );
    nats.stop().await;
}
