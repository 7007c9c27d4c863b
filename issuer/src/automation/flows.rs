//! The automation flows file (TOML): which bus events trigger what (issue a pass, update it,
//! ask for an opt-in confirmation), on which conditions, with which message templates and
//! channels, and the engagement segments. `passpulse flows check FILE` runs [`Flows::parse`],
//! whose errors name the flow and the setting that is wrong.
//!
//! ```toml
//! [[flow]]
//! name = "loyalty-signup"
//! trigger = "contact.registered"
//! when = { program = "loyalty" }      # event fields or `attrs.<key>`, all must match
//! action = "issue_pass"               # issue_pass | update_pass | confirm_optin
//! template = "loyalty"
//! copy = ["first_name", "points", "tier"]
//! defaults = { programme_name = "Club", organization = "Shop", tier = "Member", points = 0 }
//! basis = "operational"               # operational | consent
//! channels = ["email", "sms"]
//! email = { subject = "Your {programme_name} card", text = "Hi {first_name}: {link}" }
//! sms = { text = "Your card: {link}" }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use passpulse_engine::EventType;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Template;
use crate::template::{attr_text, fill};

/// A flows file that does not hold together.
#[derive(Debug, thiserror::Error)]
pub enum FlowsError {
    #[error("flows file: {0}")]
    Syntax(String),
    #[error("flow \"{flow}\": {message}")]
    Flow { flow: String, message: String },
    #[error("[segments]: {0}")]
    Segments(String),
}

/// What a flow does when it triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Issue a pass from `template` (once per customer and flow) and deliver its short link.
    IssuePass,
    /// Copy the `watch`ed attributes onto the pass `pass_from` issued, when they changed.
    UpdatePass,
    /// Send a confirmation link; following it emits `optin.confirmed`.
    ConfirmOptin,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::IssuePass => "issue_pass",
            Action::UpdatePass => "update_pass",
            Action::ConfirmOptin => "confirm_optin",
        }
    }
}

/// Delivery channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Sms,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
        }
    }
}

/// The legal basis a message is sent on; recorded on every delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// A service message (the card the customer signed up for): no marketing consent needed.
    #[default]
    Operational,
    /// Marketing: sent only if the event's `attrs.<consent_attr>` is true.
    Consent,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Operational => "operational",
            Basis::Consent => "consent",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailTemplate {
    pub subject: String,
    pub text: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsTemplate {
    pub text: String,
}

/// One flow, as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    pub name: String,
    /// Event type that starts it.
    pub trigger: String,
    /// Conditions: event field (`program`, `source`, `campaign`, `offer`, `location`) or
    /// `attrs.<key>` → the value it must have.
    #[serde(default)]
    pub when: BTreeMap<String, Value>,
    pub action: Action,
    /// `issue_pass`: the pass template (programme).
    #[serde(default)]
    pub template: Option<String>,
    /// `issue_pass`: event attributes copied onto the pass.
    #[serde(default)]
    pub copy: Vec<String>,
    /// `issue_pass`: attributes the pass gets when the event does not carry them.
    #[serde(default)]
    pub defaults: Map<String, Value>,
    /// `issue_pass`: a unique discount code is generated into attribute `discount_code`, as
    /// this text with `{code}` replaced (8 characters, derived from the serial).
    #[serde(default)]
    pub discount_code: Option<String>,
    /// `issue_pass`: the pass expires this long after issue (`expires`, `expires_text`).
    #[serde(default, with = "humantime_serde")]
    pub valid_for: Option<Duration>,
    /// `update_pass`: the `issue_pass` flow whose pass is updated.
    #[serde(default)]
    pub pass_from: Option<String>,
    /// `update_pass`: attributes that, when changed, update the pass.
    #[serde(default)]
    pub watch: Vec<String>,
    #[serde(default)]
    pub basis: Basis,
    #[serde(default)]
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub email: Option<EmailTemplate>,
    #[serde(default)]
    pub sms: Option<SmsTemplate>,
    /// Campaign recorded on the pass and on link clicks (default: the event's `campaign`, else
    /// the flow name).
    #[serde(default)]
    pub campaign: Option<String>,
}

/// Engagement segments of loyalty members.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentsConfig {
    /// Programme whose members are segmented.
    pub program: String,
    /// A member who earned points or had a pass scanned within this period is `active`; one
    /// silent longer is `inactive`.
    #[serde(with = "humantime_serde")]
    pub active_within: Duration,
    /// The pass-issuing flow whose passes belong to members (maps scans to customers).
    pub pass_from: String,
}

/// Contact attribute names the flows read.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContactKeys {
    pub email: String,
    pub phone: String,
    pub consent: String,
}

impl Default for ContactKeys {
    fn default() -> Self {
        ContactKeys {
            email: "email".into(),
            phone: "phone".into(),
            consent: "marketing_consent".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    contact: ContactKeys,
    #[serde(default)]
    flow: Vec<Flow>,
    #[serde(default)]
    segments: Option<SegmentsConfig>,
}

/// A checked flows file.
#[derive(Debug, Clone)]
pub struct Flows {
    pub contact: ContactKeys,
    pub flows: Vec<Flow>,
    pub segments: Option<SegmentsConfig>,
}

/// Placeholders every message template may use besides the pass attributes.
pub const MESSAGE_VARS: [&str; 5] = ["link", "customer", "program", "serial", "flow"];

const CONDITION_FIELDS: [&str; 6] = ["program", "source", "campaign", "offer", "location", "pass"];

impl Flows {
    /// Parses and checks a flows file; `templates` are the pass templates the server has.
    pub fn parse(text: &str, templates: &BTreeMap<String, Template>) -> Result<Flows, FlowsError> {
        let f: File = toml::from_str(text).map_err(|e| FlowsError::Syntax(e.to_string()))?;
        let flows = Flows {
            contact: f.contact,
            flows: f.flow,
            segments: f.segments,
        };
        flows.check(templates)?;
        Ok(flows)
    }

    pub fn flow(&self, name: &str) -> Option<&Flow> {
        self.flows.iter().find(|f| f.name == name)
    }

    /// Event types some flow or the segments react to.
    pub fn triggers(&self) -> BTreeSet<EventType> {
        let mut t: BTreeSet<EventType> = self
            .flows
            .iter()
            .filter_map(|f| EventType::parse(&f.trigger))
            .collect();
        if self.segments.is_some() {
            t.extend([EventType::ContactUpdated, EventType::Scan]);
        }
        t
    }

    fn check(&self, templates: &BTreeMap<String, Template>) -> Result<(), FlowsError> {
        let mut names = BTreeSet::new();
        for f in &self.flows {
            let err = |message: String| FlowsError::Flow {
                flow: f.name.clone(),
                message,
            };
            if !crate::registry::valid_id(&f.name) || f.name.len() > 64 {
                return Err(err("name must be 1–64 of A-Z a-z 0-9 _ -".into()));
            }
            if !names.insert(f.name.as_str()) {
                return Err(err("a second flow has this name".into()));
            }
            let trigger = EventType::parse(&f.trigger)
                .ok_or_else(|| err(format!("trigger \"{}\" is not an event type", f.trigger)))?;
            for k in f.when.keys() {
                let ok = CONDITION_FIELDS.contains(&k.as_str())
                    || k.strip_prefix("attrs.").is_some_and(|a| !a.is_empty());
                if !ok {
                    return Err(err(format!(
                        "condition on \"{k}\": use one of {} or attrs.<key>",
                        CONDITION_FIELDS.join(", ")
                    )));
                }
            }
            match f.action {
                Action::IssuePass => self.check_issue(f, templates).map_err(err)?,
                Action::UpdatePass => self.check_update(f).map_err(err)?,
                Action::ConfirmOptin => {
                    if trigger != EventType::OptinRequested {
                        return Err(err("confirm_optin is triggered by optin.requested".into()));
                    }
                    if !f.channels.contains(&Channel::Email) && !f.channels.contains(&Channel::Sms)
                    {
                        return Err(err("confirm_optin needs a channel to send the link".into()));
                    }
                }
            }
            if f.action == Action::UpdatePass && !f.channels.is_empty() {
                return Err(err(
                    "update_pass sends no messages: the pass updates itself".into(),
                ));
            }
            self.check_messages(f, templates).map_err(err)?;
        }
        if let Some(s) = &self.segments {
            let e = |m: &str| FlowsError::Segments(m.into());
            if s.active_within.is_zero() {
                return Err(e("active_within must be longer than zero"));
            }
            match self.flow(&s.pass_from) {
                Some(f) if f.action == Action::IssuePass => {}
                _ => return Err(e("pass_from must name an issue_pass flow")),
            }
            if !templates.contains_key(&s.program) && s.program.is_empty() {
                return Err(e("program is required"));
            }
        }
        Ok(())
    }

    fn check_issue(&self, f: &Flow, templates: &BTreeMap<String, Template>) -> Result<(), String> {
        let t = f.template.as_deref().ok_or("issue_pass needs a template")?;
        if !templates.contains_key(t) {
            let known: Vec<&str> = templates.keys().map(String::as_str).collect();
            return Err(format!(
                "template \"{t}\" does not exist (templates: {})",
                known.join(", ")
            ));
        }
        if let Some(d) = &f.discount_code
            && !d.contains("{code}")
        {
            return Err("discount_code must contain {code}".into());
        }
        if f.channels.is_empty() {
            return Err("issue_pass needs at least one channel to deliver the pass".into());
        }
        Ok(())
    }

    fn check_update(&self, f: &Flow) -> Result<(), String> {
        let from = f
            .pass_from
            .as_deref()
            .ok_or("update_pass needs pass_from")?;
        match self.flow(from) {
            Some(src) if src.action == Action::IssuePass => {}
            _ => return Err(format!("pass_from \"{from}\" is not an issue_pass flow")),
        }
        if f.watch.is_empty() {
            return Err("update_pass needs the attributes to watch".into());
        }
        Ok(())
    }

    /// Every channel has its template, and every template fills from what the flow will have.
    fn check_messages(
        &self,
        f: &Flow,
        templates: &BTreeMap<String, Template>,
    ) -> Result<(), String> {
        // the variables a message can use: the pass attributes the flow can rely on
        let mut known = Map::new();
        for v in MESSAGE_VARS {
            known.insert(v.into(), Value::String(String::new()));
        }
        for k in f.copy.iter().chain(f.defaults.keys()) {
            known.insert(k.clone(), Value::String(String::new()));
        }
        if f.discount_code.is_some() {
            known.insert("discount_code".into(), Value::String(String::new()));
        }
        if f.valid_for.is_some() {
            for k in ["expires", "expires_text"] {
                known.insert(k.into(), Value::String(String::new()));
            }
        }
        let try_fill = |what: &str, text: &str| {
            fill(text, &known).map(drop).map_err(|e| {
                format!("{what}: {e} (available: {})", {
                    let k: Vec<&str> = known.keys().map(String::as_str).collect();
                    k.join(", ")
                })
            })
        };
        for c in &f.channels {
            match c {
                Channel::Email => {
                    let t = f
                        .email
                        .as_ref()
                        .ok_or("channel email needs [email] subject/text")?;
                    try_fill("email.subject", &t.subject)?;
                    try_fill("email.text", &t.text)?;
                    if !t.text.contains("{link}") {
                        return Err("email.text must contain {link}".into());
                    }
                }
                Channel::Sms => {
                    let t = f.sms.as_ref().ok_or("channel sms needs [sms] text")?;
                    try_fill("sms.text", &t.text)?;
                    if !t.text.contains("{link}") {
                        return Err("sms.text must contain {link}".into());
                    }
                }
            }
        }
        // a pass the template would refuse is a configuration error, not a runtime one
        if f.action == Action::IssuePass
            && let Some(t) = f.template.as_deref().and_then(|t| templates.get(t))
        {
            let mut attrs = known.clone();
            attrs.insert("customer".into(), Value::String("C".into()));
            if let Err(crate::PassError::MissingAttribute(a)) = t.render(&attrs) {
                return Err(format!(
                    "template \"{}\" needs attribute \"{a}\": add it to copy or defaults",
                    t.name
                ));
            }
        }
        Ok(())
    }
}

impl Flow {
    /// True if `event` (its fields as JSON) satisfies every condition.
    pub fn matches(&self, field: impl Fn(&str) -> Option<Value>) -> bool {
        self.when.iter().all(|(k, want)| match field(k) {
            Some(v) => loose_eq(&v, want),
            None => false,
        })
    }
}

/// Equality that lets `"1"` match `1` and `true` match `"true"`: conditions are written by hand.
fn loose_eq(a: &Value, b: &Value) -> bool {
    a == b || attr_text(a) == attr_text(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn templates() -> BTreeMap<String, Template> {
        Template::load_all(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/templates"))
            .unwrap()
    }

    const GOOD: &str = r#"
[[flow]]
name = "loyalty-signup"
trigger = "contact.registered"
when = { program = "loyalty" }
action = "issue_pass"
template = "loyalty"
copy = ["first_name", "points", "tier"]
defaults = { programme_name = "Club", organization = "Shop", tier = "Member", points = 0, first_name = "member" }
channels = ["email", "sms"]
email = { subject = "Your {programme_name} card", text = "Hi {first_name}: {link}" }
sms = { text = "Your card: {link}" }

[[flow]]
name = "loyalty-points"
trigger = "contact.updated"
action = "update_pass"
pass_from = "loyalty-signup"
watch = ["points", "tier"]

[segments]
program = "loyalty"
active_within = "30d"
pass_from = "loyalty-signup"
"#;

    #[test]
    fn a_good_file_parses_and_matches() {
        let f = Flows::parse(GOOD, &templates()).unwrap();
        assert_eq!(f.flows.len(), 2);
        assert_eq!(
            f.segments.as_ref().unwrap().active_within,
            Duration::from_secs(30 * 86_400)
        );
        let flow = f.flow("loyalty-signup").unwrap();
        assert!(flow.matches(|k| (k == "program").then(|| "loyalty".into())));
        assert!(!flow.matches(|k| (k == "program").then(|| "other".into())));
        assert!(!flow.matches(|_| None));
        assert!(f.triggers().contains(&EventType::Scan));
    }

    fn error_of(text: &str) -> String {
        Flows::parse(text, &templates()).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_flow_and_the_setting() {
        let e = error_of(&GOOD.replace("template = \"loyalty\"", "template = \"nope\""));
        assert!(
            e.contains("\"loyalty-signup\"") && e.contains("\"nope\""),
            "{e}"
        );
        let e = error_of(&GOOD.replace("{link}\" }\nsms", "no link\" }\nsms"));
        assert!(e.contains("email.text must contain {link}"), "{e}");
        let e = error_of(&GOOD.replace("Hi {first_name}", "Hi {nickname}"));
        assert!(e.contains("nickname") && e.contains("available"), "{e}");
        let e = error_of(&GOOD.replace("trigger = \"contact.updated\"", "trigger = \"nope\""));
        assert!(
            e.contains("\"loyalty-points\"") && e.contains("not an event type"),
            "{e}"
        );
        let e = error_of(&GOOD.replace(
            "pass_from = \"loyalty-signup\"\nwatch",
            "pass_from = \"x\"\nwatch",
        ));
        assert!(e.contains("pass_from \"x\""), "{e}");
        let e = error_of(&GOOD.replace("organization = \"Shop\", ", ""));
        assert!(e.contains("needs attribute \"organization\""), "{e}");
        let e = error_of(&GOOD.replace("when = { program", "when = { colour"));
        assert!(e.contains("condition on \"colour\""), "{e}");
        let e = error_of("[[flow]]\nname = 1");
        assert!(e.starts_with("flows file:"), "{e}");
        let e = error_of(&format!("{GOOD}\nsurprise = 1"));
        assert!(e.contains("surprise"), "{e}");
    }

    #[test]
    fn loose_equality_for_hand_written_conditions() {
        assert!(loose_eq(&Value::from(1), &Value::from("1")));
        assert!(loose_eq(&Value::from(true), &Value::from("true")));
        assert!(!loose_eq(&Value::from("a"), &Value::from("b")));
    }
}
