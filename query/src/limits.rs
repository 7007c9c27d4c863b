//! Limits on the shape of a SQL statement, checked on the parsed text before DataFusion plans
//! it. It owns the statement's length, its nesting, the depth of its expressions and how many
//! CTEs, tables and set operations it combines; it does not own memory or time (the session and
//! the HTTP layer do).
//!
//! Why: DataFusion's planner, optimizer and the traits derived on its expression trees recurse
//! once per level of a chain (`1+1+…`, `a OR b OR …`, `x || y || …`, a chain of CTEs or
//! joins). A stack overflow aborts the whole process (ingest, issuer and PassKit included) and
//! cannot be caught, so it must not happen: the query runtime's threads get a large stack
//! (`QUERY_STACK_BYTES` in the session) and these limits keep every accepted statement well
//! inside what that stack was measured to plan and run (BENCHMARKS.md). A statement over a limit
//! is refused with a message naming the limit, before any planning.

use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{Expr, Query, SetExpr, TableFactor, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::ParserError;

/// Limits on one statement; see README "Safety".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlLimits {
    /// Longest statement, bytes.
    pub max_sql_bytes: usize,
    /// Deepest nesting of parentheses, subqueries and prefix operators the parser follows.
    pub max_nesting: usize,
    /// Deepest expression tree: a chain `a OR b OR c` of n terms is n deep.
    pub max_expr_depth: usize,
    /// Most common table expressions (`WITH … AS`), all levels together.
    pub max_ctes: usize,
    /// Most tables, subqueries and table functions in FROM clauses, all levels together.
    pub max_tables: usize,
    /// Most set operations (`UNION`, `INTERSECT`, `EXCEPT`), all levels together.
    pub max_set_operations: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits {
            max_sql_bytes: 256 << 10,
            max_nesting: 64,
            max_expr_depth: 2500,
            max_ctes: 128,
            max_tables: 64,
            max_set_operations: 1024,
        }
    }
}

/// Why a statement was refused before planning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("{0}")]
    Syntax(String),
    #[error("{what} exceeds the limit of {limit} ({setting}): {advice}")]
    OverLimit {
        what: String,
        limit: usize,
        setting: &'static str,
        advice: &'static str,
    },
    #[error("only one statement per request")]
    Several,
    #[error(
        "recursive CTEs (WITH RECURSIVE) are not accepted: nothing bounds their iterations or \
         the rows each one adds; unroll the recursion to the depth you need"
    )]
    Recursive,
}

/// Parses `sql` into one statement and checks it against `limits`.
pub(crate) fn parse_checked(sql: &str, limits: &SqlLimits) -> Result<DfStatement, ShapeError> {
    if sql.len() > limits.max_sql_bytes {
        return Err(ShapeError::OverLimit {
            what: format!("the statement's {} bytes", sql.len()),
            limit: limits.max_sql_bytes,
            setting: "query.max_sql_bytes",
            advice: "send a shorter statement (an IN list, a join or a filter instead of \
                     thousands of spelled-out terms)",
        });
    }
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(&GenericDialect {})
        .with_recursion_limit(limits.max_nesting)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| match e.find_root() {
            datafusion::error::DataFusionError::SQL(err, _)
                if matches!(**err, ParserError::RecursionLimitExceeded) =>
            {
                ShapeError::OverLimit {
                    what: "the statement's nesting of parentheses, subqueries or operators".into(),
                    limit: limits.max_nesting,
                    setting: "query.max_nesting",
                    advice: "flatten the statement",
                }
            }
            root => ShapeError::Syntax(root.to_string()),
        })?;
    let statement = match (statements.pop_front(), statements.is_empty()) {
        (Some(s), true) => s,
        (None, _) => return Err(ShapeError::Syntax("empty SQL statement".into())),
        (Some(_), false) => return Err(ShapeError::Several),
    };
    let mut shape = Shape {
        limits,
        depth: 0,
        ctes: 0,
        tables: 0,
        set_operations: 0,
    };
    if let ControlFlow::Break(e) = shape.statement(&statement) {
        return Err(e);
    }
    Ok(statement)
}

/// Counts as it walks the statement, and stops at the first limit passed (so the walk itself
/// never goes deeper than a limit).
struct Shape<'a> {
    limits: &'a SqlLimits,
    depth: usize,
    ctes: usize,
    tables: usize,
    set_operations: usize,
}

impl Shape<'_> {
    fn statement(&mut self, s: &DfStatement) -> ControlFlow<ShapeError> {
        match s {
            DfStatement::Statement(s) => s.visit(self),
            DfStatement::Explain(e) => self.statement(&e.statement),
            // refused as writes after parsing; nothing of theirs is planned
            _ => ControlFlow::Continue(()),
        }
    }

    fn check(
        count: usize,
        limit: usize,
        what: &str,
        setting: &'static str,
    ) -> ControlFlow<ShapeError> {
        if count > limit {
            ControlFlow::Break(ShapeError::OverLimit {
                what: format!("{what} ({count} so far)"),
                limit,
                setting,
                advice: "split the query or pre-aggregate",
            })
        } else {
            ControlFlow::Continue(())
        }
    }
}

impl Visitor for Shape<'_> {
    type Break = ShapeError;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<ShapeError> {
        if query.with.as_ref().is_some_and(|w| w.recursive) {
            return ControlFlow::Break(ShapeError::Recursive);
        }
        self.ctes += query.with.as_ref().map_or(0, |w| w.cte_tables.len());
        Self::check(
            self.ctes,
            self.limits.max_ctes,
            "the number of common table expressions",
            "query.max_ctes",
        )?;
        // a chain of UNIONs nests to the left: count it without recursing
        let mut pending = vec![query.body.as_ref()];
        while let Some(body) = pending.pop() {
            if let SetExpr::SetOperation { left, right, .. } = body {
                self.set_operations += 1;
                pending.push(left);
                pending.push(right);
            }
        }
        Self::check(
            self.set_operations,
            self.limits.max_set_operations,
            "the number of UNION/INTERSECT/EXCEPT operations",
            "query.max_set_operations",
        )
    }

    fn pre_visit_table_factor(&mut self, _: &TableFactor) -> ControlFlow<ShapeError> {
        self.tables += 1;
        Self::check(
            self.tables,
            self.limits.max_tables,
            "the number of tables, subqueries and table functions joined",
            "query.max_tables",
        )
    }

    fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<ShapeError> {
        self.depth += 1;
        if self.depth > self.limits.max_expr_depth {
            return ControlFlow::Break(ShapeError::OverLimit {
                what: "the expression's depth (a chain of n terms joined by operators is n deep)"
                    .into(),
                limit: self.limits.max_expr_depth,
                setting: "query.max_expr_depth",
                advice: "write long OR/AND chains of equalities as `col IN (…)`, or split the \
                         expression",
            });
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<ShapeError> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str, limits: &SqlLimits) -> String {
        match parse_checked(sql, limits) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted: {}", &sql[..sql.len().min(80)]),
        }
    }

    #[test]
    fn each_limit_is_named_when_passed() {
        let l = SqlLimits {
            max_sql_bytes: 10_000,
            max_nesting: 20,
            max_expr_depth: 50,
            max_ctes: 3,
            max_tables: 4,
            max_set_operations: 2,
        };
        let chain = |n: usize, op: &str| format!("SELECT {}", vec!["1"; n].join(op));
        assert!(parse_checked(&chain(40, "+"), &l).is_ok());
        assert!(refused(&chain(60, " OR "), &l).contains("query.max_expr_depth"));
        assert!(refused(&chain(6_000, "+"), &l).contains("query.max_sql_bytes"));
        let parens = format!("SELECT {}1{}", "(".repeat(30), ")".repeat(30));
        assert!(refused(&parens, &l).contains("query.max_nesting"));
        let ctes = "WITH a AS (SELECT 1), b AS (SELECT 1), c AS (SELECT 1), d AS (SELECT 1) \
                    SELECT 1";
        assert!(refused(ctes, &l).contains("query.max_ctes"));
        let joins = "SELECT 1 FROM a JOIN b ON true JOIN c ON true JOIN d ON true JOIN e ON true";
        assert!(refused(joins, &l).contains("query.max_tables"));
        let recursive = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) \
                         SELECT * FROM r";
        assert_eq!(parse_checked(recursive, &l), Err(ShapeError::Recursive));
        let unions = "SELECT 1 UNION SELECT 2 UNION SELECT 3 UNION SELECT 4";
        assert!(refused(unions, &l).contains("query.max_set_operations"));
        // the walk counts inside EXPLAIN and subqueries too
        let explain = format!("EXPLAIN SELECT * FROM (SELECT {})", vec!["1"; 60].join("+"));
        assert!(refused(&explain, &l).contains("query.max_expr_depth"));
        assert_eq!(
            parse_checked("SELECT 1; SELECT 2", &l),
            Err(ShapeError::Several)
        );
    }
}
