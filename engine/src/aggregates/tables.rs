//! The aggregates as Arrow record batches: the live tables `install_base`, `location_peaks`,
//! `distinct_counts`, `event_counts` and `funnel`. Built on demand from the current state (a
//! query sees the state at its planning time).

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, Date32Builder, StringBuilder, TimestampMillisecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::Aggregates;
use super::counts::RETAIN_MINUTES;
use super::passes::SliceCount;
use crate::event::Platform;
use crate::schema::ts_type;

/// The live aggregate tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableName {
    InstallBase,
    LocationPeaks,
    DistinctCounts,
    EventCounts,
    Funnel,
}

impl TableName {
    pub const ALL: [TableName; 5] = [
        TableName::InstallBase,
        TableName::LocationPeaks,
        TableName::DistinctCounts,
        TableName::EventCounts,
        TableName::Funnel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TableName::InstallBase => "install_base",
            TableName::LocationPeaks => "location_peaks",
            TableName::DistinctCounts => "distinct_counts",
            TableName::EventCounts => "event_counts",
            TableName::Funnel => "funnel",
        }
    }

    pub fn schema(self) -> SchemaRef {
        static SCHEMAS: LazyLock<[SchemaRef; 5]> = LazyLock::new(|| {
            let s = |fields: Vec<Field>| Arc::new(Schema::new(fields));
            let u = |n: &str| Field::new(n, DataType::UInt64, false);
            let t = |n: &str| Field::new(n, DataType::Utf8, false);
            [
                s(vec![
                    t("dimension"),
                    Field::new("value", DataType::Utf8, true),
                    u("active_passes"),
                    u("live_registrations"),
                ]),
                s(vec![
                    t("location"),
                    t("window"),
                    u("peak_count"),
                    Field::new("peak_minute", ts_type(), true),
                    u("scans"),
                ]),
                s(vec![
                    Field::new("day", DataType::Date32, true),
                    u("passes"),
                    u("devices"),
                    u("customers"),
                ]),
                s(vec![
                    Field::new("minute", ts_type(), false),
                    t("type"),
                    u("count"),
                ]),
                s(vec![
                    t("source"),
                    u("clicked"),
                    u("issued"),
                    u("installed"),
                    u("scanned"),
                    u("redeemed"),
                ]),
            ]
        });
        SCHEMAS[self as usize].clone()
    }
}

impl Aggregates {
    /// The current contents of a live table.
    pub fn table(&mut self, name: TableName) -> RecordBatch {
        let cols = match name {
            TableName::InstallBase => self.install_base_cols(),
            TableName::LocationPeaks => self.peaks_cols(),
            TableName::DistinctCounts => self.distinct_cols(),
            TableName::EventCounts => self.event_counts_cols(),
            TableName::Funnel => self.funnel_cols(),
        };
        RecordBatch::try_new(name.schema(), cols).expect("columns match the table schema")
    }

    /// Install-base slices: `all`, then `platform`, `program`, `source` (values sorted).
    pub fn install_base_rows(&self) -> Vec<(&'static str, Option<String>, SliceCount)> {
        let p = &self.passes;
        let mut rows = vec![("all", None, p.all)];
        for pl in Platform::ALL {
            rows.push((
                "platform",
                Some(pl.as_str().to_string()),
                p.by_platform[pl as usize],
            ));
        }
        // a slice a pass passed through and left (re-attributed, uninstalled) reads as absent,
        // the same whatever order the events arrived in
        for (dim, map) in [("program", &p.by_program), ("source", &p.by_source)] {
            let mut v: Vec<_> = map
                .iter()
                .filter(|(_, c)| **c != SliceCount::default())
                .collect();
            v.sort_by(|a, b| a.0.cmp(b.0));
            rows.extend(v.into_iter().map(|(k, c)| (dim, Some(k.to_string()), *c)));
        }
        rows
    }

    fn install_base_cols(&self) -> Vec<ArrayRef> {
        let rows = self.install_base_rows();
        let mut dim = StringBuilder::new();
        let mut val = StringBuilder::new();
        let mut active = UInt64Builder::new();
        let mut regs = UInt64Builder::new();
        for (d, v, c) in rows {
            dim.append_value(d);
            val.append_option(v);
            active.append_value(c.active_passes);
            regs.append_value(c.live_registrations);
        }
        vec![
            Arc::new(dim.finish()),
            Arc::new(val.finish()),
            Arc::new(active.finish()),
            Arc::new(regs.finish()),
        ]
    }

    fn peaks_cols(&self) -> Vec<ArrayRef> {
        let rows = self.peaks.peaks(self.watermark.unwrap_or(0));
        let mut loc = StringBuilder::new();
        let mut win = StringBuilder::new();
        let mut count = UInt64Builder::new();
        let mut minute = TimestampMillisecondBuilder::new().with_data_type(ts_type());
        let mut scans = UInt64Builder::new();
        for r in rows {
            loc.append_value(&r.location);
            win.append_value(r.window);
            count.append_value(r.peak_count);
            minute.append_option(r.peak_minute);
            scans.append_value(r.scans);
        }
        vec![
            Arc::new(loc.finish()),
            Arc::new(win.finish()),
            Arc::new(count.finish()),
            Arc::new(minute.finish()),
            Arc::new(scans.finish()),
        ]
    }

    fn distinct_cols(&mut self) -> Vec<ArrayRef> {
        let rows = self.distinct.rows();
        let mut day = Date32Builder::new();
        let mut p = UInt64Builder::new();
        let mut d = UInt64Builder::new();
        let mut c = UInt64Builder::new();
        for r in rows {
            day.append_option(r.day);
            p.append_value(r.passes);
            d.append_value(r.devices);
            c.append_value(r.customers);
        }
        vec![
            Arc::new(day.finish()),
            Arc::new(p.finish()),
            Arc::new(d.finish()),
            Arc::new(c.finish()),
        ]
    }

    fn event_counts_cols(&self) -> Vec<ArrayRef> {
        let mut minute = TimestampMillisecondBuilder::new().with_data_type(ts_type());
        let mut kind = StringBuilder::new();
        let mut count = UInt64Builder::new();
        // exactly the 7 days of minutes up to the watermark's (pruning may keep a little more)
        let wm = crate::time::minute(self.watermark.unwrap_or(0));
        let since = (wm - RETAIN_MINUTES + 1) * crate::time::MINUTE_MS;
        for (m, t, c) in self.counts.per_minute(since) {
            minute.append_value(m);
            kind.append_value(t.as_str());
            count.append_value(c);
        }
        vec![
            Arc::new(minute.finish()),
            Arc::new(kind.finish()),
            Arc::new(count.finish()),
        ]
    }

    fn funnel_cols(&self) -> Vec<ArrayRef> {
        let mut v: Vec<_> = self.passes.funnel_rows().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        let mut src = StringBuilder::new();
        let mut b: [UInt64Builder; 5] = Default::default();
        for (s, f) in v {
            src.append_value(&**s);
            for (i, x) in [f.clicked, f.issued, f.installed, f.scanned, f.redeemed]
                .into_iter()
                .enumerate()
            {
                b[i].append_value(x);
            }
        }
        let mut cols: Vec<ArrayRef> = vec![Arc::new(src.finish())];
        cols.extend(b.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        cols
    }
}
