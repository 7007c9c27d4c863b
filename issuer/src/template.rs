//! Pass templates: `data/templates/<name>/template.json` describes a pass style (store card,
//! coupon, event ticket, …), its colours, its fields and barcode, with `{placeholders}` filled
//! from the customer's attributes; the images (`icon.png` required; `logo.png`, `strip.png`,
//! `@2x`/`@3x` variants) live beside it.
//!
//! A field whose whole value is one placeholder and whose attribute is a number becomes a JSON
//! number (so Wallet can format it and a `changeMessage` shows the new number).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::google::GoogleKind;
use crate::pkpass::PassError;

/// The pass styles Apple Wallet knows.
pub const STYLES: [&str; 5] = [
    "boardingPass",
    "coupon",
    "eventTicket",
    "generic",
    "storeCard",
];

/// The field groups of a pass style, in the order Apple Wallet lays them out.
pub const FIELD_GROUPS: [&str; 5] = [
    "headerFields",
    "primaryFields",
    "secondaryFields",
    "auxiliaryFields",
    "backFields",
];

/// A field of the pass, before its placeholders are filled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FieldSpec {
    pub key: String,
    #[serde(default)]
    pub label: Option<String>,
    pub value: String,
    /// Lock-screen text when the field changes; must contain `%@`.
    #[serde(default)]
    pub change_message: Option<String>,
    /// The Google object's own field this field fills instead of a text module (one of
    /// [`GoogleKind::slots`] of the template's type, e.g. `loyaltyPoints`, `seat`).
    #[serde(default)]
    pub google: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fields {
    #[serde(default)]
    pub header: Vec<FieldSpec>,
    #[serde(default)]
    pub primary: Vec<FieldSpec>,
    #[serde(default)]
    pub secondary: Vec<FieldSpec>,
    #[serde(default)]
    pub auxiliary: Vec<FieldSpec>,
    #[serde(default)]
    pub back: Vec<FieldSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BarcodeSpec {
    /// `PKBarcodeFormatQR`, `PKBarcodeFormatPDF417`, `PKBarcodeFormatAztec` or
    /// `PKBarcodeFormatCode128`.
    pub format: String,
    pub message: String,
    #[serde(default)]
    pub alt_text: Option<String>,
}

/// The JSON of a template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TemplateSpec {
    pub style: String,
    pub description: String,
    pub organization_name: String,
    #[serde(default)]
    pub logo_text: Option<String>,
    #[serde(default)]
    pub foreground_color: Option<String>,
    #[serde(default)]
    pub background_color: Option<String>,
    #[serde(default)]
    pub label_color: Option<String>,
    #[serde(default)]
    pub fields: Fields,
    #[serde(default)]
    pub barcode: Option<BarcodeSpec>,
    /// Placeholder text for `expirationDate` (RFC 3339), e.g. `{expires}` on a coupon.
    #[serde(default)]
    pub expiration_date: Option<String>,
    /// Placeholder text for `relevantDate` (RFC 3339), e.g. `{event_start}` on a ticket.
    #[serde(default)]
    pub relevant_date: Option<String>,
    /// Google Wallet class id suffix (`{issuer_id}.{googleClass}`); see
    /// [`crate::google::class_suffix`] for the default.
    #[serde(default)]
    pub google_class: Option<String>,
}

/// A template with its images.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub spec: TemplateSpec,
    /// File name → bytes (`icon.png`, `logo@2x.png`, …).
    pub images: BTreeMap<String, Vec<u8>>,
}

impl Template {
    /// Loads `dir/template.json` and the PNG images beside it.
    pub fn load(dir: &Path) -> Result<Template, PassError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = dir.join("template.json");
        let text = std::fs::read_to_string(&file).map_err(|e| PassError::Io(file.clone(), e))?;
        let spec: TemplateSpec = serde_json::from_str(&text)
            .map_err(|e| PassError::Invalid(format!("{}: {e}", file.display())))?;
        let mut images = BTreeMap::new();
        let rd = std::fs::read_dir(dir).map_err(|e| PassError::Io(dir.to_path_buf(), e))?;
        for entry in rd.flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|x| x == "png") {
                let bytes = std::fs::read(&p).map_err(|e| PassError::Io(p.clone(), e))?;
                images.insert(entry.file_name().to_string_lossy().into_owned(), bytes);
            }
        }
        let t = Template { name, spec, images };
        t.check()?;
        Ok(t)
    }

    /// Every template under `dir` (one sub-directory each), by name.
    pub fn load_all(dir: &Path) -> Result<BTreeMap<String, Template>, PassError> {
        let mut out = BTreeMap::new();
        let rd = std::fs::read_dir(dir).map_err(|e| PassError::Io(dir.to_path_buf(), e))?;
        let mut dirs: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for d in dirs {
            let t = Template::load(&d)?;
            out.insert(t.name.clone(), t);
        }
        Ok(out)
    }

    /// What Wallet would refuse regardless of the customer.
    fn check(&self) -> Result<(), PassError> {
        let bad = |m: String| Err(PassError::Invalid(format!("template {}: {m}", self.name)));
        if !STYLES.contains(&self.spec.style.as_str()) {
            return bad(format!(
                "style \"{}\" is not a pass style (one of {})",
                self.spec.style,
                STYLES.join(", ")
            ));
        }
        if !self.images.contains_key("icon.png") {
            return bad("icon.png is missing: Wallet refuses a pass without an icon".into());
        }
        if let Some(c) = &self.spec.google_class
            && (c.is_empty()
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
        {
            return bad(format!(
                "googleClass \"{c}\" must be letters, digits, '.', '_' or '-' (a Google class id suffix)"
            ));
        }
        let kind = GoogleKind::for_style(&self.spec.style);
        let mut used: Vec<&str> = Vec::new();
        for f in self.fields() {
            let Some(slot) = f.google.as_deref() else {
                continue;
            };
            let allowed = match kind {
                None => format!(
                    "a {} pass has no Google Wallet object; leave \"google\" out",
                    self.spec.style
                ),
                Some(k) if k.slots().is_empty() => format!(
                    "a {} has no field of its own a template fills (its title is on the class); leave \"google\" out",
                    k.resource()
                ),
                Some(k) if !k.slots().contains(&slot) => {
                    format!("a {} has {}", k.resource(), k.slots().join(", "))
                }
                Some(_) if used.contains(&slot) => "another field fills it already".into(),
                Some(_) => {
                    used.push(slot);
                    continue;
                }
            };
            return bad(format!(
                "field \"{}\": \"google\": \"{slot}\" cannot be filled: {allowed}",
                f.key
            ));
        }
        Ok(())
    }

    /// Every field, in pass.json order (header, primary, secondary, auxiliary, back).
    fn fields(&self) -> impl Iterator<Item = &FieldSpec> {
        let f = &self.spec.fields;
        f.header
            .iter()
            .chain(&f.primary)
            .chain(&f.secondary)
            .chain(&f.auxiliary)
            .chain(&f.back)
    }

    /// The Google object field the field `key` fills, if the template names one.
    pub fn google_slot(&self, key: &str) -> Option<&str> {
        self.fields()
            .find(|f| f.key == key)
            .and_then(|f| f.google.as_deref())
    }

    /// The style's part of pass.json (fields, barcode, colours, dates) with the placeholders
    /// filled from `attrs`.
    pub fn render(&self, attrs: &Map<String, Value>) -> Result<Map<String, Value>, PassError> {
        let s = &self.spec;
        let mut out = Map::new();
        out.insert("description".into(), json!(fill(&s.description, attrs)?));
        out.insert(
            "organizationName".into(),
            json!(fill(&s.organization_name, attrs)?),
        );
        for (k, v) in [
            ("logoText", &s.logo_text),
            ("foregroundColor", &s.foreground_color),
            ("backgroundColor", &s.background_color),
            ("labelColor", &s.label_color),
            ("expirationDate", &s.expiration_date),
            ("relevantDate", &s.relevant_date),
        ] {
            if let Some(v) = v {
                out.insert(k.into(), json!(fill(v, attrs)?));
            }
        }
        let mut style = Map::new();
        for (k, fs) in [
            ("headerFields", &s.fields.header),
            ("primaryFields", &s.fields.primary),
            ("secondaryFields", &s.fields.secondary),
            ("auxiliaryFields", &s.fields.auxiliary),
            ("backFields", &s.fields.back),
        ] {
            if fs.is_empty() {
                continue;
            }
            let mut list = Vec::new();
            for f in fs {
                let mut o = Map::new();
                o.insert("key".into(), json!(f.key));
                if let Some(l) = &f.label {
                    o.insert("label".into(), json!(fill(l, attrs)?));
                }
                o.insert("value".into(), fill_value(&f.value, attrs)?);
                if let Some(c) = &f.change_message {
                    o.insert("changeMessage".into(), json!(c));
                }
                list.push(Value::Object(o));
            }
            style.insert(k.into(), Value::Array(list));
        }
        out.insert(s.style.clone(), Value::Object(style));
        if let Some(b) = &s.barcode {
            let mut o = Map::new();
            o.insert("format".into(), json!(b.format));
            o.insert("message".into(), json!(fill(&b.message, attrs)?));
            o.insert("messageEncoding".into(), json!("iso-8859-1"));
            if let Some(a) = &b.alt_text {
                o.insert("altText".into(), json!(fill(a, attrs)?));
            }
            out.insert("barcodes".into(), json!([Value::Object(o)]));
        }
        Ok(out)
    }
}

/// A value as text in a filled template: strings as they are, anything else as JSON.
pub(crate) fn attr_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Replaces every `{name}` in `text` with the attribute `name`; `{{` and `}}` are literal braces.
pub fn fill(text: &str, attrs: &Map<String, Value>) -> Result<String, PassError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push(tail.as_bytes()[0] as char);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err(PassError::Invalid(format!(
                "unmatched '}}' in template text \"{text}\""
            )));
        }
        let Some(end) = tail.find('}') else {
            return Err(PassError::Invalid(format!(
                "unclosed placeholder in template text \"{text}\""
            )));
        };
        let key = &tail[1..end];
        match attrs.get(key) {
            Some(v) => out.push_str(&attr_text(v)),
            None => {
                return Err(PassError::MissingAttribute(key.to_string()));
            }
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Like [`fill`], but a value that is exactly one placeholder of a numeric attribute stays a
/// number.
fn fill_value(text: &str, attrs: &Map<String, Value>) -> Result<Value, PassError> {
    if let Some(key) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}'))
        && !key.contains(['{', '}'])
        && let Some(v @ Value::Number(_)) = attrs.get(key)
    {
        return Ok(v.clone());
    }
    Ok(Value::String(fill(text, attrs)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn placeholders_are_filled_and_missing_ones_named() {
        let a = attrs(json!({"first_name": "Ada", "points": 120}));
        assert_eq!(fill("Hi {first_name}, {{x}}", &a).unwrap(), "Hi Ada, {x}");
        assert_eq!(fill_value("{points}", &a).unwrap(), json!(120));
        assert_eq!(fill_value("{points} pts", &a).unwrap(), json!("120 pts"));
        let e = fill("{tier}", &a).unwrap_err().to_string();
        assert!(e.contains("\"tier\""), "{e}");
        assert!(fill("{open", &a).is_err());
    }
}
