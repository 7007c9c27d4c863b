//! Built-in functions whose output size the query itself chooses (`repeat('x', 500000000)`,
//! `lpad`, `rpad`, `array_repeat`, `array_resize`, `range`, `generate_series`, `replace`,
//! `concat`, `concat_ws`), re-registered under their own names behind a size check, and the
//! text operator `||`, rewritten by an analyzer rule ([`BoundStringConcat`]) into a function
//! with the same check. It owns nothing else: the functions still compute exactly what
//! DataFusion's do.
//!
//! Why: DataFusion's memory pool only sees what operators reserve (hash tables, sorts, buffers).
//! A scalar function allocates its output array outside the pool, so one call could ask for
//! gigabytes before anything notices. Each wrapper estimates, from its arguments and before
//! calling the real function, an upper bound of the bytes the call (one batch) would produce,
//! and refuses the call over `max_value_bytes` with an error naming the function and the limit.
//! `||` needs its own function because `s || s` nested through a chain of CTEs is folded into a
//! constant while the query is planned, before any operator or guard runs: 60 MB doubled eight
//! times asked for 7.7 GB there.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayData, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type, IntervalUnit, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Documentation, Expr, LogicalPlan, Operator, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::prelude::SessionContext;

/// A function call refused because of the size of what it would build.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} would build about {estimate} bytes, over the {limit}-byte limit of one function's \
     output or one batch (query.max_value_mb): ask for smaller values, or fewer at once"
)]
pub struct ValueTooLarge {
    pub what: String,
    pub estimate: u64,
    pub limit: u64,
}

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: len(text) × n.
    Repeat,
    /// `lpad/rpad(text, n[, fill])`: n characters, at most 4 bytes each.
    Pad,
    /// `array_repeat(value, n)`: n copies of the value.
    ArrayRepeat,
    /// `array_resize(array, n[, value])`: n elements.
    ArrayResize,
    /// `range/generate_series(start, stop[, step])`: (stop − start) / step elements.
    Series,
    /// `replace(text, from, to)`: every occurrence of `from` (or every gap, when empty) becomes
    /// `to`.
    Replace,
    /// `concat(a, b, …)`, `a || b`: the sum of the arguments.
    Concat,
    /// `concat_ws(sep, a, b, …)`: the sum of the arguments and a separator between two.
    ConcatWs,
}

const BOUNDED: [(&str, Growth); 9] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("array_repeat", Growth::ArrayRepeat),
    ("array_resize", Growth::ArrayResize),
    ("range", Growth::Series),
    ("replace", Growth::Replace),
    ("concat", Growth::Concat),
    ("concat_ws", Growth::ConcatWs),
];

/// Registers the bounded versions over DataFusion's built-ins in `ctx`.
///
/// They are declared volatile, so the planner never folds a call into a constant: folding runs
/// before any check of ours can stop it, keeps a copy of the value for every place the call
/// appears, and a chain of CTEs can make one call appear hundreds of times (eight levels of
/// `s || s` over `repeat('x', 60000000)`: 256 folded copies of 60 MB). Evaluated at run time,
/// each call is checked and the first too-large value ends the query. The price: an expression
/// with these functions is not pushed into a table scan's filter; no insight uses them.
pub(crate) fn register(ctx: &SessionContext, max_value_bytes: usize) -> Result<()> {
    let names = BOUNDED
        .iter()
        .copied()
        .chain([("generate_series", Growth::Series)]);
    for (name, growth) in names {
        let inner = ctx.udf(name)?;
        let mut signature = inner.signature().clone();
        signature.volatility = Volatility::Volatile;
        ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
            inner,
            signature,
            growth,
            limit: max_value_bytes as u64,
        }));
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    /// The function's own signature, but volatile (see [`register`]).
    signature: Signature,
    growth: Growth,
    limit: u64,
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }
    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let estimate = estimate(self.growth, &args.args, args.number_rows)?;
        if estimate > self.limit {
            return Err(DataFusionError::External(Box::new(ValueTooLarge {
                what: format!("{}() in one batch", self.name()),
                estimate,
                limit: self.limit,
            })));
        }
        self.inner.invoke_with_args(args)
    }
}

/// Upper bound of the bytes a call over `rows` rows builds (saturating; never below the truth
/// for the value types the functions produce, up to per-array headers).
fn estimate(growth: Growth, args: &[ColumnarValue], rows: usize) -> Result<u64> {
    let rows = rows.max(1);
    Ok(match growth {
        Growth::Repeat => {
            let len = str_bytes(&args[0], rows)?;
            let n = ints(&args[1], rows)?;
            dot(&len, &n)
        }
        Growth::Pad => ints(&args[1], rows)?
            .iter()
            .fold(0u64, |acc, n| acc.saturating_add(pos(*n).saturating_mul(4))),
        Growth::ArrayRepeat => {
            let n = ints(&args[1], rows)?;
            let max_n = n.iter().copied().map(pos).max().unwrap_or(0);
            let total_n = n.iter().copied().map(pos).fold(0u64, u64::saturating_add);
            // Σ nᵢ·sizeᵢ ≤ max(n)·Σ sizeᵢ; plus an offset or a fixed-width slot per copy
            let value = value_bytes(&args[0]);
            max_n
                .saturating_mul(value)
                .saturating_add(total_n.saturating_mul(8))
        }
        Growth::ArrayResize => ints(&args[1], rows)?.iter().fold(0u64, |acc, n| {
            acc.saturating_add(pos(*n).saturating_mul(16))
        }),
        Growth::Series => series_elements(args, rows)?.saturating_mul(8),
        Growth::Replace => {
            let text = str_bytes(&args[0], rows)?;
            let from = str_bytes(&args[1], rows)?;
            let to = str_bytes(&args[2], rows)?;
            text.iter()
                .zip(&from)
                .zip(&to)
                .fold(0u64, |acc, ((t, f), to)| {
                    let hits = t / (*f).max(1) + 1;
                    acc.saturating_add(*t)
                        .saturating_add(hits.saturating_mul(*to))
                })
        }
        Growth::Concat => args
            .iter()
            .map(|a| text_total(a, rows))
            .fold(0u64, u64::saturating_add),
        Growth::ConcatWs => {
            let sep = args.first().map_or(0, |a| text_total(a, rows));
            args[1..]
                .iter()
                .map(|a| text_total(a, rows))
                .fold(0u64, u64::saturating_add)
                .saturating_add(sep.saturating_mul(args.len().saturating_sub(2) as u64))
        }
    })
}

/// Bytes of an argument's text over `rows` rows (a scalar repeats on every row); for a
/// non-text argument, its memory (a number's text is a few times its 8 bytes at most).
fn text_total(v: &ColumnarValue, rows: usize) -> u64 {
    match v {
        ColumnarValue::Scalar(s) => match s.try_as_str() {
            Some(t) => (t.map_or(0, str::len) as u64).saturating_mul(rows as u64),
            None => value_bytes(v).saturating_mul(rows as u64),
        },
        ColumnarValue::Array(a) => array_bytes(&a.to_data()),
    }
}

/// Bytes an array's values occupy: its slice of every buffer, and for string and binary views
/// the data buffers the views point into, which `get_slice_memory_size` does not count (it sees
/// 16 bytes per 60 MB view).
pub(crate) fn array_bytes(d: &ArrayData) -> u64 {
    fn view_buffers(d: &ArrayData) -> u64 {
        let own = if matches!(d.data_type(), DataType::Utf8View | DataType::BinaryView) {
            d.buffers().iter().skip(1).map(|b| b.len() as u64).sum()
        } else {
            0
        };
        d.child_data()
            .iter()
            .map(view_buffers)
            .fold(own, u64::saturating_add)
    }
    (d.get_slice_memory_size().unwrap_or(0) as u64).saturating_add(view_buffers(d))
}

/// Rewrites every `a || b` on text or bytes (a binary operator DataFusion evaluates outside any function,
/// and folds into a constant at planning when it can) into [`ConcatOp`], which refuses a value
/// over the limit before building it. Runs after type coercion; keeps the expressions' names.
#[derive(Debug)]
pub(crate) struct BoundStringConcat {
    udf: Arc<ScalarUDF>,
}

impl BoundStringConcat {
    pub(crate) fn new(max_value_bytes: usize) -> BoundStringConcat {
        BoundStringConcat {
            udf: Arc::new(ScalarUDF::new_from_impl(ConcatOp {
                signature: Signature::any(2, Volatility::Volatile),
                limit: max_value_bytes as u64,
            })),
        }
    }
}

impl AnalyzerRule for BoundStringConcat {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let names = NamePreserver::new(&node);
            node.map_expressions(|e| {
                let name = names.save(&e);
                let rewritten = e.transform_up(|e| match e {
                    Expr::BinaryExpr(BinaryExpr {
                        left,
                        op: Operator::StringConcat,
                        right,
                    }) => Ok(Transformed::yes(self.udf.call(vec![*left, *right]))),
                    other => Ok(Transformed::no(other)),
                })?;
                Ok(rewritten.update_data(|e| name.restore(e)))
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "passpulse_bound_string_concat"
    }
}

/// `a || b` on text or bytes behind the size check: null when either side is null, as the
/// operator.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ConcatOp {
    signature: Signature,
    limit: u64,
}

impl ScalarUDFImpl for ConcatOp {
    fn name(&self) -> &str {
        "||"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(concat_type(arg_types))
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let types: Vec<DataType> = args
            .arg_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
        Ok(Arc::new(datafusion::arrow::datatypes::Field::new(
            self.name(),
            concat_type(&types),
            nullable,
        )))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let estimate = estimate(Growth::Concat, &args.args, rows)?;
        if estimate > self.limit {
            return Err(DataFusionError::External(Box::new(ValueTooLarge {
                what: "the || operator in one batch".into(),
                estimate,
                limit: self.limit,
            })));
        }
        let target = args.return_field.data_type().clone();
        let scalars = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [l, r] = arrays.as_slice() else {
            return Err(DataFusionError::Internal("|| takes two arguments".into()));
        };
        let joined = datafusion::arrow::compute::kernels::concat_elements::concat_elements_dyn(
            &cast(l, &target)?,
            &cast(r, &target)?,
        )?;
        Ok(if scalars {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&joined, 0)?)
        } else {
            ColumnarValue::Array(joined)
        })
    }
}

/// The type of `a || b` (both sides as DataFusion's coercion left them): large if either side
/// is, a view if both are, text unless a side is binary.
fn concat_type(types: &[DataType]) -> DataType {
    use DataType::*;
    let binary = types
        .iter()
        .any(|t| matches!(t, Binary | LargeBinary | BinaryView | FixedSizeBinary(_)));
    let large = types.iter().any(|t| matches!(t, LargeUtf8 | LargeBinary));
    let views = !types.is_empty() && types.iter().all(|t| matches!(t, Utf8View | BinaryView));
    match (binary, large, views) {
        (false, true, _) => LargeUtf8,
        (false, false, true) => Utf8View,
        (false, false, false) => Utf8,
        (true, true, _) => LargeBinary,
        (true, false, true) => BinaryView,
        (true, false, false) => Binary,
    }
}

fn pos(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn dot(a: &[u64], b: &[i64]) -> u64 {
    a.iter().zip(b).fold(0u64, |acc, (x, n)| {
        acc.saturating_add(x.saturating_mul(pos(*n)))
    })
}

/// Row `i`'s value of an integer argument, for every row (a scalar repeated).
fn ints(v: &ColumnarValue, rows: usize) -> Result<Vec<i64>> {
    match v {
        ColumnarValue::Scalar(s) => {
            let n = match s.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(n) => n.unwrap_or(0),
                _ => 0,
            };
            Ok(vec![n; rows])
        }
        ColumnarValue::Array(a) => {
            let a = cast(a, &DataType::Int64)?;
            Ok(a.as_primitive::<Int64Type>()
                .iter()
                .map(|n| n.unwrap_or(0))
                .collect())
        }
    }
}

/// Row `i`'s byte length of a text argument, for every row (a scalar is not copied).
fn str_bytes(v: &ColumnarValue, rows: usize) -> Result<Vec<u64>> {
    match v {
        ColumnarValue::Scalar(s) => {
            let len = s.try_as_str().flatten().map_or(0, str::len);
            Ok(vec![len as u64; rows])
        }
        ColumnarValue::Array(a) => {
            let a = match a.data_type() {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => a.clone(),
                _ => cast(a, &DataType::Utf8)?,
            };
            let lens: Vec<u64> = match a.data_type() {
                DataType::Utf8 => a.as_string::<i32>().iter().map(len).collect(),
                DataType::LargeUtf8 => a.as_string::<i64>().iter().map(len).collect(),
                _ => a.as_string_view().iter().map(len).collect(),
            };
            Ok(lens)
        }
    }
}

fn len(s: Option<&str>) -> u64 {
    s.map_or(0, |s| s.len() as u64)
}

/// Bytes of an argument's values over the whole call (a scalar counts once).
fn value_bytes(v: &ColumnarValue) -> u64 {
    match v {
        ColumnarValue::Scalar(s) => (s.size() - std::mem::size_of::<ScalarValue>()).max(8) as u64,
        ColumnarValue::Array(a) => a.get_array_memory_size() as u64,
    }
}

/// Elements `range`/`generate_series` would build over all rows.
fn series_elements(args: &[ColumnarValue], rows: usize) -> Result<u64> {
    let arrays = ColumnarValue::values_to_arrays(args)?;
    let rows = arrays.first().map_or(rows, |a| a.len());
    let (start, stop, step) = match arrays.len() {
        1 => (vec![0; rows], as_i64(&arrays[0])?, vec![1; rows]),
        2 => (as_i64(&arrays[0])?, as_i64(&arrays[1])?, vec![1; rows]),
        _ => (
            as_i64(&arrays[0])?,
            as_i64(&arrays[1])?,
            step_of(&arrays[2])?,
        ),
    };
    let mut total = 0u64;
    for ((a, b), s) in start.iter().zip(&stop).zip(&step) {
        let span = (i128::from(*b) - i128::from(*a)).unsigned_abs();
        let step = i128::from(*s).unsigned_abs().max(1);
        let n = u64::try_from(span / step + 1).unwrap_or(u64::MAX);
        total = total.saturating_add(n);
    }
    Ok(total)
}

/// Integers, or dates and timestamps as microseconds.
fn as_i64(a: &ArrayRef) -> Result<Vec<i64>> {
    let a = match a.data_type() {
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => {
            let us = cast(a, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
            cast(&us, &DataType::Int64)?
        }
        _ => cast(a, &DataType::Int64)?,
    };
    Ok(a.as_primitive::<Int64Type>()
        .iter()
        .map(|v| v.unwrap_or(0))
        .collect())
}

/// A step in the unit of [`as_i64`]: an interval as microseconds (a month as 28 days, so the
/// estimate stays an upper bound), anything else as an integer.
fn step_of(a: &ArrayRef) -> Result<Vec<i64>> {
    if !matches!(a.data_type(), DataType::Interval(_)) {
        return as_i64(a);
    }
    let a = cast(a, &DataType::Interval(IntervalUnit::MonthDayNano))?;
    Ok(
        a.as_primitive::<datafusion::arrow::datatypes::IntervalMonthDayNanoType>()
            .iter()
            .map(|v| {
                v.map_or(1, |v| {
                    const DAY_US: i64 = 86_400_000_000;
                    i64::from(v.months)
                        .saturating_mul(28 * DAY_US)
                        .saturating_add(i64::from(v.days).saturating_mul(DAY_US))
                        .saturating_add(v.nanoseconds / 1_000)
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(n: i64) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::Int64(Some(n)))
    }
    fn text(s: &str) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.into())))
    }

    #[test]
    fn estimates_are_upper_bounds_of_what_the_attacks_asked_for() {
        assert_eq!(
            estimate(Growth::Repeat, &[text("x"), int(500_000_000)], 1).unwrap(),
            500_000_000
        );
        assert_eq!(
            estimate(Growth::Pad, &[text("x"), int(1_000), text("ab")], 3).unwrap(),
            12_000
        );
        assert_eq!(
            estimate(Growth::Series, &[int(1), int(300_000_000)], 1).unwrap(),
            300_000_000 * 8
        );
        assert!(estimate(Growth::Series, &[int(1), int(10), int(0)], 1).unwrap() >= 80);
        assert!(estimate(Growth::Replace, &[text("aaaa"), text(""), text("bb")], 1).unwrap() >= 12);
        // concat and || count every argument over every row
        assert_eq!(
            estimate(Growth::Concat, &[text("abc"), text("de")], 10).unwrap(),
            50
        );
        assert_eq!(
            estimate(
                Growth::ConcatWs,
                &[text(","), text("abc"), text("de"), text("f")],
                1
            )
            .unwrap(),
            6 + 2
        );
        // a negative count builds nothing
        assert_eq!(
            estimate(Growth::Repeat, &[text("x"), int(-5)], 1).unwrap(),
            0
        );
    }
}
