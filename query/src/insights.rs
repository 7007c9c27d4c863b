//! The named insights: SQL views over `events` that analysts can compose (`insight_<name>`), and
//! the same SQL narrowed by a [`Scope`] for `GET /api/v1/insights/{name}`.
//!
//! Each insight is a template whose event source is written `{events}`. As a view, `{events}` is
//! the whole `events` table. For the endpoint, it becomes a derived table of the events inside
//! the scope; the scope's values are bound as named parameters (`$from`, `$source`, …), never
//! written into the SQL text, so no request value can change a statement. Definitions, precise
//! enough to recompute each figure by hand, are in `docs/insights.md`.
//!
//! The SQL is shaped for DataFusion's executor (each choice measured in BENCHMARKS.md):
//! - "the previous/first event of each registration or pass" is a `lag` over one sort of the
//!   rows, not a window `PARTITION BY` the registration or an ordered `first_value` aggregate:
//!   both pay per group, and nearly every group holds one or two rows;
//! - a `CROSS JOIN` with a one-row table (the horizon) puts that table first: the executor
//!   buffers its left input and emits one batch per left row.

use std::fmt::Write as _;

use datafusion::common::ScalarValue;
use passpulse_engine::schema::UTC;
use passpulse_engine::time::parse_rfc3339_millis;

/// One named insight.
#[derive(Debug, Clone, Copy)]
pub struct Insight {
    pub name: &'static str,
    /// One line for listings.
    pub title: &'static str,
    /// The query, with `{events}` where the events come from (always followed by `AS <alias>`).
    template: &'static str,
}

/// Settings some insights use, from the server's configuration (`[insights]`).
#[derive(Debug, Clone, PartialEq)]
pub struct InsightSettings {
    /// Cost of one postal letter, in the user's currency (default 1.00).
    pub letter_cost: f64,
    /// A device with no event for this long (milliseconds) no longer counts in the estimated
    /// active base (default 90 days).
    pub silent_after_ms: i64,
}

impl Default for InsightSettings {
    fn default() -> Self {
        InsightSettings {
            letter_cost: 1.0,
            silent_after_ms: 90 * 86_400_000,
        }
    }
}

impl Insight {
    /// The view's name in SQL.
    pub fn view_name(&self) -> String {
        format!("insight_{}", self.name)
    }

    /// The SQL of the view: the template over every event (feeds: the first page).
    pub fn view_sql(&self, settings: &InsightSettings) -> String {
        self.render("events", DEFAULT_LIMIT, 0, settings)
    }

    /// The SQL over the events in `scope`, and the values of its parameters.
    pub fn scoped_sql(
        &self,
        scope: &Scope,
        settings: &InsightSettings,
    ) -> (String, Vec<(String, ScalarValue)>) {
        let (source, params) = scope.events_sql();
        let sql = self.render(&source, scope.limit, scope.offset, settings);
        (sql, params)
    }

    /// The template with its event source and the numbers written in: numbers the server
    /// formats itself (configuration, a validated page), never request text.
    fn render(&self, events: &str, limit: u32, offset: u32, settings: &InsightSettings) -> String {
        let cost = if settings.letter_cost.is_finite() {
            settings.letter_cost
        } else {
            0.0
        };
        self.template
            .replace("{letter_cost}", &format!("{cost:?}"))
            .replace("{silent_ms}", &settings.silent_after_ms.to_string())
            .replace("{limit}", &limit.to_string())
            .replace("{offset}", &offset.to_string())
            .replace("{events}", events)
    }
}

/// Rows per page of the feeds (`limit`), and the most one request may ask for.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 10_000;

/// The origin of each pass, the one definition every view that attributes a pass uses: the
/// programme, signup source, campaign and customer of its first `pass.issued` by event time `ts`,
/// then stream sequence `seq`, then event `id` (the events of one NDJSON message share a `seq`,
/// so `id` is the last, deterministic tie-break). Any later `pass.issued` of the same serial is a
/// re-issue: it never re-attributes the pass, whatever order the events arrived in.
/// `issue_id` names the first issue, so a view can tell it from the re-issues.
pub const PASS_ORIGIN_VIEW: (&str, &str) = (
    "pass_origin",
    // the first issue of each pass is the row whose predecessor, in (pass, ts, seq, id) order, is
    // another pass: one sort and a `lag`, much cheaper than ordered `first_value` aggregates
    "SELECT pass, program, source, campaign, customer, issued_at, issue_id FROM ( \
       SELECT pass, CAST(program AS VARCHAR) AS program, CAST(source AS VARCHAR) AS source, \
              CAST(campaign AS VARCHAR) AS campaign, customer, ts AS issued_at, id AS issue_id, \
              lag(pass) OVER (ORDER BY pass, ts, seq, id) AS prev_pass \
       FROM events WHERE type = 'pass.issued' AND pass IS NOT NULL) AS issued \
     WHERE prev_pass IS DISTINCT FROM pass",
);

/// `WITH … pass_rows AS (…)`: one row per pass seen in any event, with its origin (from
/// `pass_origin`, whatever the scope), lifecycle times, usage and current install state (see
/// `passes` in `docs/insights.md`).
macro_rules! pass_rows {
    () => {
        "WITH regs AS ( \
           SELECT pass, device, last_value(CAST(type AS VARCHAR) ORDER BY ts, seq, id) AS last \
           FROM {events} AS ev \
           WHERE type IN ('pass.installed', 'pass.uninstalled') GROUP BY pass, device), \
         state AS ( \
           SELECT pass, count(*) FILTER (WHERE last = 'pass.installed') AS devices \
           FROM regs GROUP BY pass), \
         life AS ( \
           SELECT pass, \
                  min(ts) FILTER (WHERE type = 'pass.installed') AS installed_at, \
                  min(ts) FILTER (WHERE type IN ('scan', 'redemption')) AS first_used_at, \
                  max(ts) FILTER (WHERE type IN ('scan', 'redemption')) AS last_used_at, \
                  max(ts) FILTER (WHERE type = 'pass.uninstalled') AS removed_at, \
                  count(*) FILTER (WHERE type = 'scan') AS scans, \
                  count(*) FILTER (WHERE type = 'redemption') AS redemptions \
           FROM {events} AS ev WHERE pass IS NOT NULL GROUP BY pass), \
         pass_rows AS ( \
           SELECT l.pass, o.program, o.source, o.campaign, o.customer, o.issued_at, \
                  l.installed_at, l.first_used_at, l.last_used_at, \
                  CASE WHEN coalesce(s.devices, 0) = 0 THEN l.removed_at END AS removed_at, \
                  l.scans, l.redemptions, coalesce(s.devices, 0) AS devices, \
                  CASE WHEN coalesce(s.devices, 0) > 0 THEN 'installed' \
                       WHEN s.pass IS NOT NULL THEN 'removed' \
                       ELSE 'never installed' END AS state \
           FROM life l LEFT JOIN state s ON l.pass = s.pass \
           LEFT JOIN pass_origin o ON l.pass = o.pass)"
    };
}

/// `WITH registrations AS (…)`: every install and removal of a pass on a device, a removal with
/// the install it ends (the same pass and device's previous event, if it is an install).
///
/// "Previous" is the row before in (pass, device, ts, seq, id) order when it has the same pass and
/// device: one sort and `lag` over it, rather than a window partitioned by registration (which
/// pays per partition, and nearly every registration is its own partition of one or two rows).
macro_rules! removals {
    () => {
        "WITH ordered AS ( \
           SELECT pass, device, installed, ts, lag(pass) OVER w AS prev_pass, \
                  lag(device) OVER w AS prev_device, lag(installed) OVER w AS prev_installed, \
                  lag(ts) OVER w AS prev_ts \
           FROM (SELECT pass, device, type = 'pass.installed' AS installed, ts, seq, id \
                 FROM {events} AS ev \
                 WHERE type IN ('pass.installed', 'pass.uninstalled')) AS r \
           WINDOW w AS (ORDER BY pass, device, ts, seq, id)), \
         ended AS ( \
           SELECT pass, device, \
                  CASE WHEN installed THEN 'pass.installed' ELSE 'pass.uninstalled' END AS kind, \
                  ts, \
                  CASE WHEN NOT installed AND prev_installed \
                            AND (prev_pass IS NOT DISTINCT FROM pass) \
                            AND (prev_device IS NOT DISTINCT FROM device) \
                    THEN prev_ts END AS installed_at \
           FROM ordered), \
         registrations AS ( \
           SELECT pass, device, kind, ts, installed_at, \
                  (CAST(ts AS BIGINT) - CAST(installed_at AS BIGINT)) / 3600000.0 \
                    AS hours_installed \
           FROM ended)"
    };
}

/// Every insight, in the order of `docs/insights.md`.
pub const INSIGHTS: &[Insight] = &[
    Insight {
        name: "adoption_daily",
        title: "Passes issued, installs, removals and passes installed per UTC day",
        // re-issues: the day's `pass.issued` events that are not their pass's first issue
        template: "WITH days AS ( \
             SELECT date_trunc('day', ts) AS day, \
                    count(*) FILTER (WHERE type = 'pass.issued') AS issued, \
                    count(*) FILTER (WHERE type = 'pass.installed') AS installs, \
                    count(*) FILTER (WHERE type = 'pass.uninstalled') AS uninstalls, \
                    count(DISTINCT pass) FILTER (WHERE type = 'pass.installed') \
                      AS passes_installed \
             FROM {events} AS ev \
             WHERE type IN ('pass.issued', 'pass.installed', 'pass.uninstalled') \
             GROUP BY 1), \
           reissued AS ( \
             SELECT date_trunc('day', ev.ts) AS day, count(*) AS reissues \
             FROM {events} AS ev JOIN pass_origin o ON ev.pass = o.pass \
             WHERE ev.type = 'pass.issued' AND ev.id <> o.issue_id GROUP BY 1) \
           SELECT d.day, d.issued, coalesce(r.reissues, 0) AS reissues, d.installs, \
                  d.uninstalls, d.passes_installed \
           FROM days d LEFT JOIN reissued r ON d.day = r.day ORDER BY 1",
    },
    Insight {
        name: "scans_by_location",
        title: "Scans per location: accepted, rejected, distinct passes, first and last scan",
        template: "SELECT CAST(location AS VARCHAR) AS location, count(*) AS scans, \
             count(*) FILTER (WHERE result = 'accepted') AS accepted, \
             count(*) FILTER (WHERE result = 'rejected') AS rejected, \
             count(DISTINCT pass) AS passes, min(ts) AS first_scan, max(ts) AS last_scan \
           FROM {events} AS ev WHERE type = 'scan' \
           GROUP BY 1 ORDER BY scans DESC, location",
    },
    Insight {
        name: "scan_heatmap",
        title: "Scans per hour of the week (UTC; weekday 0 = Sunday)",
        template: "SELECT CAST(date_part('dow', ts) AS INT) AS weekday, \
             CAST(date_part('hour', ts) AS INT) AS hour, count(*) AS scans \
           FROM {events} AS ev WHERE type = 'scan' \
           GROUP BY 1, 2 ORDER BY 1, 2",
    },
    Insight {
        name: "location_peaks",
        title: "Each location's busiest minute and hour of scanning",
        template: "WITH minutes AS ( \
             SELECT CAST(location AS VARCHAR) AS location, date_trunc('minute', ts) AS t, \
                    count(*) AS scans \
             FROM {events} AS ev WHERE type = 'scan' GROUP BY 1, 2), \
           hours AS ( \
             SELECT location, date_trunc('hour', t) AS t, sum(scans) AS scans \
             FROM minutes GROUP BY 1, 2), \
           top_minute AS ( \
             SELECT location, t, scans, \
                    row_number() OVER (PARTITION BY location ORDER BY scans DESC, t) AS rn \
             FROM minutes), \
           top_hour AS ( \
             SELECT location, t, scans, \
                    row_number() OVER (PARTITION BY location ORDER BY scans DESC, t) AS rn \
             FROM hours) \
           SELECT m.location, m.t AS peak_minute, m.scans AS peak_minute_scans, \
                  h.t AS peak_hour, h.scans AS peak_hour_scans \
           FROM top_minute m JOIN top_hour h ON m.location = h.location \
           WHERE m.rn = 1 AND h.rn = 1 \
           ORDER BY peak_minute_scans DESC, m.location",
    },
    Insight {
        name: "usage_daily",
        title: "Scans (accepted, rejected), redemptions and redeemed value per UTC day",
        template: "SELECT date_trunc('day', ts) AS day, \
             count(*) FILTER (WHERE type = 'scan') AS scans, \
             count(*) FILTER (WHERE type = 'scan' AND result = 'accepted') AS accepted, \
             count(*) FILTER (WHERE type = 'scan' AND result = 'rejected') AS rejected, \
             count(*) FILTER (WHERE type = 'redemption') AS redemptions, \
             sum(value) FILTER (WHERE type = 'redemption') AS redeemed_value \
           FROM {events} AS ev WHERE type IN ('scan', 'redemption') \
           GROUP BY 1 ORDER BY 1",
    },
    Insight {
        name: "channel_funnel",
        title: "Per signup source and campaign: link clicked → issued → installed → first scan \
                → redemption, with conversion rates, and offer engagement of the installed passes",
        // a pass joins its funnel row by its origin, and only when that first issue is in scope:
        // a re-issue in scope neither counts as an issued pass nor moves the pass to its source
        template: "WITH per_pass AS ( \
             SELECT pass, \
                    bool_or(type = 'pass.installed') AS was_installed, \
                    bool_or(type = 'scan') AS was_scanned, \
                    bool_or(type = 'redemption') AS was_redeemed, \
                    bool_or(type IN ('offer.viewed', 'offer.engaged')) AS was_engaged \
             FROM {events} AS ev WHERE pass IS NOT NULL \
               AND type IN ('pass.installed', 'scan', 'redemption', 'offer.viewed', \
                            'offer.engaged') \
             GROUP BY pass), \
           issued AS ( \
             SELECT o.pass, o.source, o.campaign \
             FROM pass_origin o \
             JOIN (SELECT id FROM {events} AS ev WHERE type = 'pass.issued') AS i \
               ON o.issue_id = i.id), \
           steps AS ( \
             SELECT i.source, i.campaign, \
                    count(*) AS issued, \
                    count(*) FILTER (WHERE p.was_installed) AS installed, \
                    count(*) FILTER (WHERE p.was_installed AND p.was_scanned) AS scanned, \
                    count(*) FILTER (WHERE p.was_installed AND p.was_scanned \
                                       AND p.was_redeemed) AS redeemed, \
                    count(*) FILTER (WHERE p.was_installed AND p.was_engaged) AS engaged \
             FROM issued i LEFT JOIN per_pass p ON i.pass = p.pass GROUP BY 1, 2), \
           clicks AS ( \
             SELECT CAST(source AS VARCHAR) AS source, CAST(campaign AS VARCHAR) AS campaign, \
                    count(*) AS clicked \
             FROM {events} AS ev WHERE type = 'link.clicked' GROUP BY 1, 2), \
           joined AS ( \
             SELECT coalesce(s.source, c.source) AS source, \
                    coalesce(s.campaign, c.campaign) AS campaign, \
                    coalesce(c.clicked, 0) AS clicked, coalesce(s.issued, 0) AS issued, \
                    coalesce(s.installed, 0) AS installed, coalesce(s.scanned, 0) AS scanned, \
                    coalesce(s.redeemed, 0) AS redeemed, coalesce(s.engaged, 0) AS engaged \
             FROM steps s FULL JOIN clicks c \
               ON (s.source IS NOT DISTINCT FROM c.source) \
              AND (s.campaign IS NOT DISTINCT FROM c.campaign)) \
           SELECT source, campaign, clicked, issued, installed, scanned, redeemed, engaged, \
                  CASE WHEN clicked > 0 THEN issued * 1.0 / clicked END AS issued_per_click, \
                  CASE WHEN issued > 0 THEN installed * 1.0 / issued END AS install_rate, \
                  CASE WHEN installed > 0 THEN scanned * 1.0 / installed END AS scan_rate, \
                  CASE WHEN scanned > 0 THEN redeemed * 1.0 / scanned END AS redemption_rate, \
                  CASE WHEN installed > 0 THEN engaged * 1.0 / installed END AS engagement_rate \
           FROM joined ORDER BY issued DESC, clicked DESC, source, campaign",
    },
    Insight {
        name: "passes",
        title: "One row per pass: origin, lifecycle times, usage and current install state",
        template: concat!(pass_rows!(), " SELECT * FROM pass_rows ORDER BY pass"),
    },
    Insight {
        name: "postal_list",
        title: "Customers whose pass is not installed (never, or removed): who still needs a letter",
        template: concat!(
            pass_rows!(),
            " SELECT customer, pass, program, source, state, issued_at, removed_at \
              FROM pass_rows WHERE state <> 'installed' AND customer IS NOT NULL \
              ORDER BY customer, pass"
        ),
    },
    Insight {
        name: "uninstall_patterns",
        title: "Per signup source: registrations, removals, uninstall rate, time installed before \
                removal (median, 90th percentile)",
        template: concat!(
            removals!(),
            // The percentiles are exact linear interpolation between closest ranks (numpy's
            // default): the p-quantile of n sorted values sits at 0-based position p·(n − 1),
            // whose whole part and fraction come from integers, so no rounding moves a rank
            // (DataFusion's percentile_cont truncates the fraction to 1e-6). Only the known
            // durations are collected, and each source's are sorted once (an ordered array_agg
            // would make the planner sort every registration row first).
            ", per_source AS ( \
                SELECT o.source, \
                  count(*) FILTER (WHERE r.kind = 'pass.installed') AS installs, \
                  count(*) FILTER (WHERE r.kind = 'pass.uninstalled') AS removals, \
                  array_sort(array_agg(r.hours_installed) \
                    FILTER (WHERE r.hours_installed IS NOT NULL)) AS hours \
                FROM registrations r LEFT JOIN pass_origin o ON r.pass = o.pass \
                GROUP BY o.source), \
              ranks AS ( \
                SELECT source, installs, removals, hours, n, \
                       CAST(floor((n - 1) / 2.0) AS BIGINT) AS m, \
                       ((n - 1) - 2 * floor((n - 1) / 2.0)) / 2.0 AS m_frac, \
                       CAST(floor(9 * (n - 1) / 10.0) AS BIGINT) AS q, \
                       (9 * (n - 1) - 10 * floor(9 * (n - 1) / 10.0)) / 10.0 AS q_frac \
                FROM (SELECT *, CAST(array_length(hours) AS BIGINT) AS n FROM per_source) AS s) \
              SELECT source, installs, removals, \
                CASE WHEN installs > 0 THEN removals * 1.0 / installs END AS uninstall_rate, \
                hours[m + 1] + m_frac * (hours[least(m + 2, n)] - hours[m + 1]) \
                  AS median_hours_installed, \
                hours[q + 1] + q_frac * (hours[least(q + 2, n)] - hours[q + 1]) \
                  AS p90_hours_installed \
              FROM ranks ORDER BY source NULLS LAST"
        ),
    },
    Insight {
        name: "removals",
        title: "One row per removal of a pass from a device, with how long it had been installed",
        template: concat!(
            removals!(),
            " SELECT pass, device, installed_at, ts AS removed_at, hours_installed \
              FROM registrations WHERE kind = 'pass.uninstalled' ORDER BY ts, pass, device"
        ),
    },
    Insight {
        name: "survival",
        title: "Share of installed passes still installed 1, 7, 30 and 90 days after their first \
                install, by issue-week cohort and signup source",
        template: "WITH firsts AS ( \
             SELECT pass, min(ts) AS t0 FROM {events} AS ev \
             WHERE type = 'pass.installed' GROUP BY pass), \
           horizon AS (SELECT max(ts) AS h FROM {events} AS ev), \
           days AS ( \
             SELECT d, span_ms FROM (VALUES (1, 86400000), (7, 604800000), (30, 2592000000), \
                                            (90, 7776000000)) AS t(d, span_ms)), \
           checks AS ( \
             SELECT f.pass, f.t0, days.d, \
                    CAST(f.t0 AS BIGINT) + days.span_ms AS at_ms \
             FROM horizon CROSS JOIN days CROSS JOIN firsts f \
             WHERE CAST(f.t0 AS BIGINT) + days.span_ms <= CAST(horizon.h AS BIGINT)), \
           latest AS ( \
             SELECT c.pass, c.d, e.device, \
                    last_value(CAST(e.type AS VARCHAR) ORDER BY e.ts, e.seq) AS last \
             FROM checks c JOIN {events} AS e ON e.pass = c.pass \
             WHERE e.type IN ('pass.installed', 'pass.uninstalled') \
               AND CAST(e.ts AS BIGINT) <= c.at_ms \
             GROUP BY c.pass, c.d, e.device), \
           alive AS ( \
             SELECT pass, d, bool_or(last = 'pass.installed') AS installed \
             FROM latest GROUP BY pass, d) \
           SELECT date_trunc('week', coalesce(o.issued_at, c.t0)) AS cohort_week, o.source, \
                  c.d AS days, count(*) AS passes, \
                  count(*) FILTER (WHERE a.installed) AS still_installed, \
                  count(*) FILTER (WHERE a.installed) * 1.0 / count(*) AS survival \
           FROM checks c JOIN alive a ON c.pass = a.pass AND c.d = a.d \
           LEFT JOIN pass_origin o ON c.pass = o.pass \
           GROUP BY 1, 2, 3 ORDER BY 1, 2 NULLS LAST, 3",
    },
    Insight {
        name: "offers",
        title: "Per offer: views, engagements, redemptions, redemption value and rate",
        // one row per (offer, pass) first, so "viewed and redeemed" is a property of a pass: the
        // rate's numerator is a subset of its denominator and it cannot pass 100 %
        template: "WITH per_pass AS ( \
             SELECT CAST(offer AS VARCHAR) AS offer, pass, \
                    count(*) FILTER (WHERE type = 'offer.viewed') AS views, \
                    count(*) FILTER (WHERE type = 'offer.engaged') AS engagements, \
                    count(*) FILTER (WHERE type = 'redemption') AS redemptions, \
                    sum(value) FILTER (WHERE type = 'redemption') AS redeemed_value \
             FROM {events} AS ev \
             WHERE type IN ('offer.viewed', 'offer.engaged', 'redemption') \
               AND offer IS NOT NULL \
             GROUP BY 1, 2) \
           SELECT offer, sum(views) AS views, sum(engagements) AS engagements, \
                  sum(redemptions) AS redemptions, sum(redeemed_value) AS redeemed_value, \
                  count(pass) FILTER (WHERE views > 0) AS passes_viewing, \
                  count(pass) FILTER (WHERE redemptions > 0) AS passes_redeeming, \
                  count(pass) FILTER (WHERE views > 0 AND redemptions > 0) AS viewers_redeeming, \
                  count(pass) FILTER (WHERE views = 0 AND redemptions > 0) \
                    AS redeemed_without_view, \
                  CASE WHEN count(pass) FILTER (WHERE views > 0) > 0 \
                    THEN count(pass) FILTER (WHERE views > 0 AND redemptions > 0) * 1.0 \
                         / count(pass) FILTER (WHERE views > 0) END AS redemption_rate \
           FROM per_pass GROUP BY 1 ORDER BY redemptions DESC, views DESC, offer",
    },
    Insight {
        name: "interaction_frequency",
        title: "Per week: how many scanning passes were scanned once, twice, … (the distribution of \
                scans per active pass)",
        template: "WITH weekly AS ( \
             SELECT date_trunc('week', ts) AS week, pass, count(*) AS scans \
             FROM {events} AS ev WHERE type = 'scan' GROUP BY 1, 2) \
           SELECT week, scans AS scans_per_pass, count(*) AS passes \
           FROM weekly GROUP BY 1, 2 ORDER BY 1, 2",
    },
    Insight {
        name: "repeat_visits",
        title: "Passes scanned, passes scanned on two or more days, and the repeat-visit rate",
        template: "WITH visits AS ( \
             SELECT pass, count(DISTINCT date_trunc('day', ts)) AS days \
             FROM {events} AS ev WHERE type = 'scan' GROUP BY pass) \
           SELECT count(*) AS passes_scanned, \
                  count(*) FILTER (WHERE days >= 2) AS repeat_passes, \
                  CASE WHEN count(*) > 0 \
                    THEN count(*) FILTER (WHERE days >= 2) * 1.0 / count(*) END \
                    AS repeat_visit_rate \
           FROM visits",
    },
    Insight {
        name: "active_base_daily",
        title: "Exact active install base at the end of each day with changes, by platform, \
                programme and signup source",
        // events that change nothing (a repeated install, a removal of nothing) make no row
        template: "WITH sorted AS ( \
             SELECT pass, device, platform, ts, installed, \
                    lag(pass) OVER w AS prev_pass, lag(device) OVER w AS prev_device, \
                    lag(installed) OVER w AS prev_installed \
             FROM (SELECT pass, device, CAST(platform AS VARCHAR) AS platform, ts, seq, id, \
                          type = 'pass.installed' AS installed \
                   FROM {events} AS ev \
                   WHERE type IN ('pass.installed', 'pass.uninstalled')) AS r \
             WINDOW w AS (ORDER BY pass, device, ts, seq, id)), \
           ordered AS ( \
             SELECT pass, platform, ts, installed, \
                    CASE WHEN (prev_pass IS NOT DISTINCT FROM pass) \
                              AND (prev_device IS NOT DISTINCT FROM device) \
                      THEN prev_installed END AS prev_installed \
             FROM sorted), \
           changes AS ( \
             SELECT date_trunc('day', r.ts) AS day, r.platform, o.program, o.source, \
                    CASE WHEN r.installed AND NOT coalesce(r.prev_installed, false) THEN 1 \
                         WHEN NOT r.installed AND r.prev_installed THEN -1 \
                         ELSE 0 END AS delta \
             FROM ordered r LEFT JOIN pass_origin o ON r.pass = o.pass), \
           daily AS ( \
             SELECT day, platform, program, source, sum(delta) AS net, \
                    sum(CASE WHEN delta > 0 THEN 1 ELSE 0 END) AS installs, \
                    sum(CASE WHEN delta < 0 THEN 1 ELSE 0 END) AS removals \
             FROM changes WHERE delta <> 0 GROUP BY 1, 2, 3, 4) \
           SELECT day, platform, program, source, installs, removals, \
                  sum(net) OVER (PARTITION BY platform, program, source ORDER BY day \
                                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS active \
           FROM daily ORDER BY day, platform, program NULLS LAST, source NULLS LAST",
    },
    Insight {
        name: "estimated_active_base",
        title: "Active registrations now, and the estimate that leaves out devices gone or silent \
                too long, by platform, programme and signup source",
        // a sign of life is any event naming the device but a scan or a redemption: on those
        // `device` is the scanner or till at the location, on every other the wallet's device
        template: "WITH latest AS ( \
             SELECT pass, device, \
                    last_value(CAST(type AS VARCHAR) ORDER BY ts, seq, id) AS last, \
                    last_value(CAST(platform AS VARCHAR) ORDER BY ts, seq, id) AS platform \
             FROM {events} AS ev WHERE type IN ('pass.installed', 'pass.uninstalled') \
             GROUP BY pass, device), \
           active AS (SELECT pass, device, platform FROM latest WHERE last = 'pass.installed'), \
           seen AS ( \
             SELECT device, max(ts) AS last_seen, \
                    max(ts) FILTER (WHERE type = 'device.gone') AS gone_at, \
                    max(ts) FILTER (WHERE type = 'pass.installed') AS installed_at \
             FROM {events} AS ev WHERE device IS NOT NULL \
               AND type NOT IN ('scan', 'redemption') GROUP BY device), \
           horizon AS (SELECT max(ts) AS h FROM {events} AS ev), \
           judged AS ( \
             SELECT a.platform, o.program, o.source, \
                    (s.gone_at IS NOT NULL AND s.gone_at >= s.installed_at) AS gone, \
                    CAST(horizon.h AS BIGINT) - CAST(s.last_seen AS BIGINT) > {silent_ms} \
                      AS silent \
             FROM horizon CROSS JOIN active a JOIN seen s ON a.device = s.device \
             LEFT JOIN pass_origin o ON a.pass = o.pass) \
           SELECT platform, program, source, count(*) AS active, \
                  count(*) FILTER (WHERE gone) AS devices_gone, \
                  count(*) FILTER (WHERE silent AND NOT gone) AS devices_silent, \
                  count(*) FILTER (WHERE NOT gone AND NOT silent) AS estimated_active \
           FROM judged GROUP BY 1, 2, 3 \
           ORDER BY platform, program NULLS LAST, source NULLS LAST",
    },
    Insight {
        name: "postal_savings",
        title: "Customers who need a letter, letters avoided because their pass is installed, \
                and the saving at the configured cost per letter",
        template: concat!(
            pass_rows!(),
            ", customers AS ( \
                SELECT customer, bool_or(state = 'installed') AS has_pass \
                FROM pass_rows WHERE customer IS NOT NULL GROUP BY customer) \
              SELECT count(*) AS customers, \
                count(*) FILTER (WHERE NOT has_pass) AS letters_needed, \
                count(*) FILTER (WHERE has_pass) AS letters_avoided, \
                {letter_cost} AS cost_per_letter, \
                count(*) FILTER (WHERE has_pass) * {letter_cost} AS saving \
              FROM customers"
        ),
    },
    Insight {
        name: "scans_by_scanner",
        title: "Scans per location, scanner device and operator: accepted and rejected",
        template: "SELECT CAST(location AS VARCHAR) AS location, device AS scanner, \
             CAST(operator AS VARCHAR) AS operator, count(*) AS scans, \
             count(*) FILTER (WHERE result = 'accepted') AS accepted, \
             count(*) FILTER (WHERE result = 'rejected') AS rejected \
           FROM {events} AS ev WHERE type = 'scan' \
           GROUP BY 1, 2, 3 ORDER BY scans DESC, location, scanner, operator",
    },
    Insight {
        name: "activity",
        title: "The newest events (event time), a page at a time (`limit`, `offset`)",
        template: "SELECT ts, CAST(type AS VARCHAR) AS type, pass, customer, device, \
             CAST(platform AS VARCHAR) AS platform, CAST(location AS VARCHAR) AS location, \
             CAST(source AS VARCHAR) AS source, CAST(campaign AS VARCHAR) AS campaign, \
             CAST(offer AS VARCHAR) AS offer, CAST(result AS VARCHAR) AS result, id \
           FROM {events} AS ev ORDER BY ts DESC, id DESC LIMIT {limit} OFFSET {offset}",
    },
];

/// The insight called `name`.
pub fn find(name: &str) -> Option<&'static Insight> {
    INSIGHTS.iter().find(|i| i.name == name)
}

/// Which events an insight reads: a half-open event-time range and exact matches on the
/// event's programme, source and campaign (or, for events that do not carry one, those of its
/// pass's `pass.issued`) and on its location. Every part is optional.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    /// Epoch milliseconds, inclusive.
    pub from: Option<i64>,
    /// Epoch milliseconds, exclusive.
    pub to: Option<i64>,
    pub program: Option<String>,
    pub source: Option<String>,
    pub campaign: Option<String>,
    pub location: Option<String>,
    /// Rows per page of the feeds (1–[`MAX_LIMIT`], default [`DEFAULT_LIMIT`]).
    pub limit: u32,
    /// Rows skipped before the page (at most 1,000,000).
    pub offset: u32,
}

impl Default for Scope {
    fn default() -> Self {
        Scope {
            from: None,
            to: None,
            program: None,
            source: None,
            campaign: None,
            location: None,
            limit: DEFAULT_LIMIT,
            offset: 0,
        }
    }
}

/// A scope value that cannot be used, named by its parameter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("parameter `{param}`: {problem}")]
pub struct ScopeError {
    pub param: &'static str,
    pub problem: String,
}

/// Longest accepted filter value, as the event fields themselves.
const MAX_VALUE_CHARS: usize = passpulse_engine::event::MAX_STR_CHARS;

impl Scope {
    /// A scope from request parameters: `from`/`to` as RFC 3339 instants, UTC dates
    /// (`2026-11-24` = that day's midnight) or epoch milliseconds; the others 1–256 characters.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        program: Option<&str>,
        source: Option<&str>,
        campaign: Option<&str>,
        location: Option<&str>,
    ) -> Result<Scope, ScopeError> {
        let scope = Scope {
            from: from.map(|v| instant("from", v)).transpose()?,
            to: to.map(|v| instant("to", v)).transpose()?,
            program: program.map(|v| text("program", v)).transpose()?,
            source: source.map(|v| text("source", v)).transpose()?,
            campaign: campaign.map(|v| text("campaign", v)).transpose()?,
            location: location.map(|v| text("location", v)).transpose()?,
            ..Scope::default()
        };
        if let (Some(f), Some(t)) = (scope.from, scope.to)
            && f >= t
        {
            return Err(ScopeError {
                param: "to",
                problem: "must be later than `from`".into(),
            });
        }
        Ok(scope)
    }

    /// The same scope with a page of `limit` rows after `offset` (both as request text).
    pub fn with_page(
        mut self,
        limit: Option<&str>,
        offset: Option<&str>,
    ) -> Result<Scope, ScopeError> {
        if let Some(v) = limit {
            self.limit = number("limit", v, 1, MAX_LIMIT)?;
        }
        if let Some(v) = offset {
            self.offset = number("offset", v, 0, 1_000_000)?;
        }
        Ok(self)
    }

    /// The derived table of the events in scope (`(SELECT …)`), and its parameters.
    fn events_sql(&self) -> (String, Vec<(String, ScalarValue)>) {
        let mut conds = Vec::new();
        let mut params = Vec::new();
        let ts = |v: i64| ScalarValue::TimestampMillisecond(Some(v), Some(UTC.into()));
        if let Some(v) = self.from {
            conds.push("e.ts >= $from".to_string());
            params.push(("from".to_string(), ts(v)));
        }
        if let Some(v) = self.to {
            conds.push("e.ts < $to".to_string());
            params.push(("to".to_string(), ts(v)));
        }
        let attributed = [
            ("program", &self.program),
            ("source", &self.source),
            ("campaign", &self.campaign),
        ];
        let join = attributed.iter().any(|(_, v)| v.is_some());
        for (name, value) in attributed {
            if let Some(v) = value {
                conds.push(format!(
                    "coalesce(CAST(e.{name} AS VARCHAR), o.{name}) = ${name}"
                ));
                params.push((name.to_string(), ScalarValue::Utf8(Some(v.clone()))));
            }
        }
        if let Some(v) = &self.location {
            conds.push("CAST(e.location AS VARCHAR) = $location".to_string());
            params.push(("location".to_string(), ScalarValue::Utf8(Some(v.clone()))));
        }
        let mut sql = String::from("(SELECT e.* FROM events e");
        if join {
            sql.push_str(" LEFT JOIN pass_origin o ON e.pass = o.pass");
        }
        if !conds.is_empty() {
            let _ = write!(sql, " WHERE {}", conds.join(" AND "));
        }
        sql.push(')');
        (sql, params)
    }
}

fn instant(param: &'static str, v: &str) -> Result<i64, ScopeError> {
    let v = v.trim();
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    let full = if v.len() == 10 {
        format!("{v}T00:00:00Z")
    } else {
        v.to_string()
    };
    parse_rfc3339_millis(&full).ok_or_else(|| ScopeError {
        param,
        problem: format!(
            "expected an RFC 3339 instant, a date (YYYY-MM-DD) or epoch milliseconds, got {v:?}"
        ),
    })
}

fn number(param: &'static str, v: &str, min: u32, max: u32) -> Result<u32, ScopeError> {
    match v.trim().parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ScopeError {
            param,
            problem: format!("expected a whole number from {min} to {max}, got {v:?}"),
        }),
    }
}

fn text(param: &'static str, v: &str) -> Result<String, ScopeError> {
    let n = v.chars().count();
    if n == 0 || n > MAX_VALUE_CHARS {
        return Err(ScopeError {
            param,
            problem: format!("must be 1–{MAX_VALUE_CHARS} characters, got {n}"),
        });
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_values_become_parameters_not_sql() {
        let s = Scope::parse(
            Some("2026-11-01"),
            Some("2026-11-02T00:00:00+01:00"),
            None,
            Some("x' OR '1'='1"),
            None,
            Some("berlin"),
        )
        .unwrap();
        assert_eq!(s.from, Some(1_793_491_200_000));
        assert_eq!(s.to, Some(1_793_491_200_000 + 23 * 3_600_000));
        let (sql, params) = find("scans_by_location")
            .unwrap()
            .scoped_sql(&s, &InsightSettings::default());
        assert!(!sql.contains("OR '1'='1"), "{sql}");
        assert!(sql.contains("LEFT JOIN pass_origin"));
        let names: Vec<_> = params.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["from", "to", "source", "location"]);
        // no attribute filter: no join in the event source (the view itself joins pass_origin
        // for the passes' origin)
        let (sql, _) = find("passes")
            .unwrap()
            .scoped_sql(&Scope::default(), &InsightSettings::default());
        assert!(
            !sql.contains("events e LEFT JOIN") && sql.contains("(SELECT e.* FROM events e)"),
            "{sql}"
        );
    }

    #[test]
    fn bad_scope_values_are_named() {
        let e = Scope::parse(Some("yesterday"), None, None, None, None, None).unwrap_err();
        assert_eq!(e.param, "from");
        let e = Scope::parse(
            Some("2026-11-02"),
            Some("2026-11-01"),
            None,
            None,
            None,
            None,
        )
        .unwrap_err();
        assert_eq!(e.param, "to");
        let long = "x".repeat(MAX_VALUE_CHARS + 1);
        let e = Scope::parse(None, None, Some(&long), None, None, None).unwrap_err();
        assert_eq!(e.param, "program");
        assert_eq!(
            Scope::parse(None, None, None, None, Some(""), None)
                .unwrap_err()
                .param,
            "campaign"
        );
        let page = |l, o| Scope::default().with_page(l, o);
        assert_eq!(page(Some("0"), None).unwrap_err().param, "limit");
        assert_eq!(page(Some("10001"), None).unwrap_err().param, "limit");
        assert_eq!(page(None, Some("-1")).unwrap_err().param, "offset");
        let p = page(Some("25"), Some("50")).unwrap();
        assert_eq!((p.limit, p.offset), (25, 50));
    }
}
