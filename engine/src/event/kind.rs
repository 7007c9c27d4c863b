//! The closed set of event types of wire format v1 and the fields each one requires.
//!
//! Adding a type means adding a variant here, at the end; every table, counter and metric that is
//! keyed by type iterates [`EventType::ALL`], so nothing else has to be touched to count it, and
//! per-type counters are stored with their length, so a checkpoint written before a type was
//! added still loads (the new type starts at zero).

use std::fmt;

/// Every event type of wire format v1 (DESIGN.md "Events").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum EventType {
    PassIssued,
    PassInstalled,
    PassUninstalled,
    PassUpdated,
    PassFetched,
    PushSent,
    PushFailed,
    DeviceGone,
    LinkClicked,
    Scan,
    Redemption,
    OfferViewed,
    OfferEngaged,
    ContactRegistered,
    ContactUpdated,
    OptinRequested,
    OptinConfirmed,
    SegmentEntered,
    MessageSent,
    MessageFailed,
}

/// Optional fields that some types require (besides `id`, `type`, `ts`, which all require).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Pass,
    Program,
    Customer,
    Device,
    Platform,
    Location,
    Operator,
    Source,
    Offer,
    Result,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::Pass => "pass",
            Field::Program => "program",
            Field::Customer => "customer",
            Field::Device => "device",
            Field::Platform => "platform",
            Field::Location => "location",
            Field::Operator => "operator",
            Field::Source => "source",
            Field::Offer => "offer",
            Field::Result => "result",
        }
    }
}

impl EventType {
    /// Number of event types; arrays indexed by `type as usize` have this length.
    pub const COUNT: usize = 20;

    pub const ALL: [EventType; Self::COUNT] = [
        EventType::PassIssued,
        EventType::PassInstalled,
        EventType::PassUninstalled,
        EventType::PassUpdated,
        EventType::PassFetched,
        EventType::PushSent,
        EventType::PushFailed,
        EventType::DeviceGone,
        EventType::LinkClicked,
        EventType::Scan,
        EventType::Redemption,
        EventType::OfferViewed,
        EventType::OfferEngaged,
        EventType::ContactRegistered,
        EventType::ContactUpdated,
        EventType::OptinRequested,
        EventType::OptinConfirmed,
        EventType::SegmentEntered,
        EventType::MessageSent,
        EventType::MessageFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PassIssued => "pass.issued",
            EventType::PassInstalled => "pass.installed",
            EventType::PassUninstalled => "pass.uninstalled",
            EventType::PassUpdated => "pass.updated",
            EventType::PassFetched => "pass.fetched",
            EventType::PushSent => "push.sent",
            EventType::PushFailed => "push.failed",
            EventType::DeviceGone => "device.gone",
            EventType::LinkClicked => "link.clicked",
            EventType::Scan => "scan",
            EventType::Redemption => "redemption",
            EventType::OfferViewed => "offer.viewed",
            EventType::OfferEngaged => "offer.engaged",
            EventType::ContactRegistered => "contact.registered",
            EventType::ContactUpdated => "contact.updated",
            EventType::OptinRequested => "optin.requested",
            EventType::OptinConfirmed => "optin.confirmed",
            EventType::SegmentEntered => "segment.entered",
            EventType::MessageSent => "message.sent",
            EventType::MessageFailed => "message.failed",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        Self::ALL.iter().copied().find(|t| t.as_str() == s)
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Fields this type requires besides `id`, `type` and `ts`.
    pub fn required(self) -> &'static [Field] {
        use Field::*;
        match self {
            EventType::PassIssued => &[Pass, Program],
            EventType::PassInstalled | EventType::PassUninstalled => &[Pass, Device, Platform],
            EventType::PassUpdated => &[Pass],
            EventType::PassFetched | EventType::PushSent | EventType::PushFailed => &[Pass, Device],
            EventType::DeviceGone => &[Device],
            EventType::LinkClicked => &[Source],
            EventType::Scan => &[Pass, Location, Device, Operator],
            EventType::Redemption => &[Pass, Offer, Location],
            EventType::OfferViewed | EventType::OfferEngaged => &[Pass, Offer],
            EventType::ContactRegistered
            | EventType::ContactUpdated
            | EventType::OptinRequested
            | EventType::OptinConfirmed => &[Customer],
            EventType::SegmentEntered => &[Customer, Program, Result],
            EventType::MessageSent | EventType::MessageFailed => &[Customer, Source],
        }
    }

    /// The NATS subject a single event of this type is published on.
    pub fn subject(self, prefix: &str) -> String {
        format!("{prefix}.{}", self.as_str())
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Wallet platform of an install/uninstall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum Platform {
    Apple,
    Google,
}

impl Platform {
    pub const ALL: [Platform; 2] = [Platform::Apple, Platform::Google];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Apple => "apple",
            Platform::Google => "google",
        }
    }

    pub fn parse(s: &str) -> Option<Platform> {
        match s {
            "apple" => Some(Platform::Apple),
            "google" => Some(Platform::Google),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_through_its_name() {
        for (i, t) in EventType::ALL.iter().enumerate() {
            assert_eq!(t.index(), i, "ALL must be in discriminant order");
            assert_eq!(EventType::parse(t.as_str()), Some(*t));
        }
        assert_eq!(EventType::parse("pass.exploded"), None);
    }

    #[test]
    fn single_event_subject_keeps_the_dots() {
        assert_eq!(
            EventType::PassInstalled.subject("passpulse.events"),
            "passpulse.events.pass.installed"
        );
    }
}
