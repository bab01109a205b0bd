//! The query planner: checks a SQL text against Sentinel's subset and binds every view to the caller's tenant.
//!
//! `POST /v1/query` runs tenants' SQL on the shared PostgreSQL database, so this module is a
//! security boundary. [`plan`] parses the text with `sqlparser` (PostgreSQL dialect), walks every
//! node of the tree and refuses any kind of node it does not know (deny by default), replaces the
//! one view in `FROM` by its [definition](ViewDef::definition) —
//! `(SELECT … FROM events WHERE tenant_id = $1) AS events` — and renders the statement again from
//! the tree. PostgreSQL never sees the caller's text: comments and whatever the parser skipped are
//! gone, and every relation the statement reads is a view definition bound to `$1`.
//!
//! The subset, in short: one `SELECT [DISTINCT]` over one view of [`VIEWS`] (optionally aliased),
//! with `WHERE`, `GROUP BY`, `HAVING`, `ORDER BY`, `LIMIT` and `OFFSET`; column references,
//! literals, the usual operators (including JSON's `->`, `->>`, `#>`, `#>>`), `IN`, `BETWEEN`,
//! `LIKE`/`ILIKE`, `IS [NOT] NULL/TRUE/FALSE`, `CASE`, `EXTRACT`, casts to a list of plain types,
//! and a list of functions ([`plan`] lists them). `time_bucket(interval, ts)` is rewritten to
//! `date_bin(interval, ts, TIMESTAMPTZ '2000-01-01 00:00:00+00')`. No subqueries, joins, set
//! operations, CTEs, window functions, locking clauses, parameters or schema-qualified names.
//!
//! Running the result: bind `$1` to the tenant id, as text, when [`PlannedQuery::binds_tenant`]
//! says so (a query over a global view has no parameter at all), and keep PostgreSQL's
//! `standard_conforming_strings` on (the default): string literals are rendered with backslashes
//! as ordinary characters.
//!
//! | file | owns |
//! | --- | --- |
//! | `plan.rs` | [`plan`], statement and clause checks, the `FROM` rewrite |
//! | `plan/expr.rs` | expressions: operators, literals, casts, functions, the `time_bucket` rewrite |
//! | `plan/views.rs` | [`VIEWS`]: each view's columns and definition |
//! | `plan/source.rs` | tokens and the locations errors point at |

mod expr;
mod source;
#[cfg(test)]
mod tests;
mod views;

use std::ops::ControlFlow;

use sqlparser::ast::{
    Distinct, Expr, GroupByExpr, Ident, LimitClause, ObjectName, ObjectNamePart, Offset, OrderBy,
    OrderByKind, Query, Select, SelectFlavor, SelectItem, SelectItemQualifiedWildcardKind, SetExpr,
    SetOperator, SetQuantifier, Spanned, Statement, TableAlias, TableFactor, TableWithJoins, Value,
    ValueWithSpan, Visit, Visitor, WildcardAdditionalOptions,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan};

pub use views::{ViewDef, VIEWS};

use expr::{Exprs, Names};
use source::{start_or, Source};

/// The longest query text accepted, in bytes. It bounds the work and the depth of the tree
/// (`sqlparser` builds long operator chains without recursion, but drops them recursively).
pub const MAX_SQL_BYTES: usize = 16 * 1024;

/// The deepest nesting of expressions accepted (`a + b + c` is 3 deep: operator chains nest).
pub const MAX_EXPR_DEPTH: usize = 100;

/// A query in Sentinel's subset, rewritten to run against the base tables for one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedQuery {
    /// The statement to run. Its only parameter is `$1`, the tenant id (text), and it has one
    /// only when it reads a tenant-scoped view (see [`PlannedQuery::binds_tenant`]).
    pub sql: String,
    /// The views it reads, by name (one, in this subset).
    pub views: Vec<&'static str>,
}

impl PlannedQuery {
    /// Whether [`sql`](Self::sql) has the `$1` parameter: true when it reads a tenant-scoped
    /// view. A query over global views only (`slo_samples`, `pipeline_health`) has none, so the
    /// tenant must not be bound (the statement takes no parameter).
    pub fn binds_tenant(&self) -> bool {
        self.views
            .iter()
            .any(|name| ViewDef::find(name).is_some_and(|view| view.tenant_scoped))
    }
}

/// Why a query was refused, and where: always the caller's fault (HTTP 400), never retriable.
///
/// `line` and `column` are 1-based and point at the offending token, counted in characters;
/// `token` is that token's text when the error starts at one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PlanError {
    /// What is wrong and, where it helps, what is allowed instead.
    pub message: String,
    /// Line of the offending token, from 1.
    pub line: u64,
    /// Column of the offending token, from 1.
    pub column: u64,
    /// The offending token's text, when known.
    pub token: Option<String>,
}

impl PlanError {
    fn new(message: String, at: Location, token: Option<String>) -> Self {
        Self {
            message,
            line: at.line.max(1),
            column: at.column.max(1),
            token,
        }
    }
}

/// Checks `sql` against the subset and rewrites it to read the views' definitions.
///
/// Functions allowed: `count` (also `count(*)`, `count(DISTINCT x)`), `sum`, `avg`, `min`, `max`
/// (all with `FILTER (WHERE …)`), `percentile_cont` and `percentile_disc` with
/// `WITHIN GROUP (ORDER BY …)`, `date_trunc`, `time_bucket`, `now`, `coalesce`, `nullif`,
/// `lower`, `upper`, `length`, `abs`, `round`, `floor`, `ceil`, `greatest`, `least`,
/// `jsonb_array_length`, `jsonb_typeof`.
///
/// ```
/// let planned = queries::plan::plan("select type, count(*) from events group by type").unwrap();
/// assert!(planned.sql.starts_with("SELECT type, count(*) FROM (SELECT id, tenant_id, "));
/// assert!(planned.sql.ends_with(" WHERE tenant_id = $1) AS events GROUP BY type"));
/// assert_eq!(planned.views, ["events"]);
/// ```
pub fn plan(sql: &str) -> Result<PlannedQuery, PlanError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(PlanError::new(
            format!(
                "the query is {} bytes long; the limit is {MAX_SQL_BYTES}",
                sql.len()
            ),
            Location::new(1, 1),
            None,
        ));
    }
    let (source, tokens) = Source::tokenize(sql)?;
    if let Some(placeholder) = tokens
        .iter()
        .find(|t| matches!(t.token, Token::Placeholder(_)))
    {
        return Err(source.error(
            placeholder.span.start,
            format!(
                "parameters such as {} are not allowed: write values as literals (the server binds the tenant itself)",
                placeholder.token
            ),
        ));
    }
    let mut query = parse_one_query(&source, tokens)?;
    check_depth(&source, &query)?;
    let view = Planner { source: &source }.query(&mut query)?;
    let sql = query.to_string();
    reads_back_as(&sql, &query)?;
    Ok(PlannedQuery {
        sql,
        views: vec![view.name],
    })
}

/// Defence in depth: the rendered text must parse back to exactly the tree that was checked, so
/// that nothing in the rendering (a `--` formed by two tokens, say) changes what runs.
fn reads_back_as(sql: &str, checked: &Query) -> Result<(), PlanError> {
    match Parser::parse_sql(&PostgreSqlDialect {}, sql).as_deref() {
        Ok([Statement::Query(query)]) if **query == *checked => Ok(()),
        _ => Err(PlanError::new(
            "internal error: the rewritten query does not read back as planned".to_string(),
            Location::new(1, 1),
            None,
        )),
    }
}

/// Parses exactly one query: a `SELECT` (or what the parser reads as a query), then at most one `;`.
fn parse_one_query(source: &Source, tokens: Vec<TokenWithSpan>) -> Result<Query, PlanError> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let first = parser.peek_token();
    match &first.token {
        Token::Word(word)
            if word.quote_style.is_none()
                && matches!(
                    word.keyword,
                    Keyword::SELECT | Keyword::WITH | Keyword::VALUES
                ) => {}
        Token::LParen => {}
        Token::EOF => {
            return Err(source.error(first.span.start, "the query is empty: send one SELECT"))
        }
        Token::Word(word) => {
            return Err(source.error(
                first.span.start,
                format!(
                    "{} statements are not supported: send one SELECT over one view",
                    word.value.to_ascii_uppercase()
                ),
            ))
        }
        other => {
            return Err(source.error(
                first.span.start,
                format!("syntax error: expected SELECT, found {other}"),
            ))
        }
    }
    let query = parser.parse_query().map_err(|e| source.parser_error(e))?;
    let semicolon = parser.consume_token(&Token::SemiColon);
    let next = parser.peek_token();
    if next.token != Token::EOF {
        let message = if semicolon {
            format!(
                "only one statement is allowed; found {} after ';'",
                next.token
            )
        } else {
            format!(
                "syntax error: expected the end of the query, found {}",
                next.token
            )
        };
        return Err(source.error(next.span.start, message));
    }
    Ok(*query)
}

/// Refuses expressions nested deeper than [`MAX_EXPR_DEPTH`], before anything else recurses
/// into them (the checks below, and `sqlparser`'s own span and display code, are recursive).
fn check_depth(source: &Source, query: &Query) -> Result<(), PlanError> {
    struct Depth {
        depth: usize,
    }
    impl Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.depth += 1;
            if self.depth > MAX_EXPR_DEPTH {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
    }
    match query.visit(&mut Depth { depth: 0 }) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(source.error(
            Location::new(1, 1),
            format!("the query nests expressions more than {MAX_EXPR_DEPTH} deep; use IN (…) for long lists of alternatives"),
        )),
    }
}

/// What names mean in one query: the view `FROM` reads and the select list's aliases.
struct Scope {
    view: &'static ViewDef,
    /// The name columns may be qualified with: the `FROM` alias, else the view's name (normalised).
    qualifier: String,
    /// Whether the `FROM` item has an alias (then the view's name no longer qualifies columns).
    aliased: bool,
    /// The select list's aliases (normalised) and the expressions they name, already rewritten.
    aliases: Vec<(String, Expr)>,
    /// How many columns the select list has (`*` counts the view's columns), for ordinals.
    outputs: usize,
}

impl Scope {
    fn alias(&self, name: &str) -> Option<&Expr> {
        self.aliases
            .iter()
            .find(|(alias, _)| alias == name)
            .map(|(_, expr)| expr)
    }

    fn has_column(&self, name: &str) -> bool {
        self.view.columns.contains(&name)
    }
}

/// Checks the statement's clauses; expressions are [`Exprs`]' job.
struct Planner<'s> {
    source: &'s Source,
}

impl Planner<'_> {
    fn query(&self, query: &mut Query) -> Result<&'static ViewDef, PlanError> {
        let Query {
            with,
            body,
            order_by,
            limit_clause,
            fetch,
            locks,
            for_clause,
            settings,
            format_clause,
            pipe_operators,
        } = query;
        let start = self.source.start();
        if let Some(with) = with {
            return Err(self.source.error(
                with.with_token.0.span.start,
                "WITH (common table expressions) is not supported: one SELECT over one view",
            ));
        }
        let select = self.body(body, start)?;
        if fetch.is_some() {
            return Err(self.source.error(
                self.source.keyword_after(start, Keyword::FETCH),
                "FETCH is not supported: use LIMIT",
            ));
        }
        if !locks.is_empty() || for_clause.is_some() {
            return Err(self.source.error(
                self.source.keyword_before(self.source.end(), Keyword::FOR),
                "FOR UPDATE/SHARE and other FOR clauses are not supported: queries only read",
            ));
        }
        if settings.is_some() || format_clause.is_some() || !pipe_operators.is_empty() {
            return Err(self
                .source
                .error(start, "this query syntax is not supported"));
        }
        let (view, scope) = self.select(select)?;
        if let Some(order_by) = order_by {
            self.order_by(order_by, &scope)?;
        }
        if let Some(limit_clause) = limit_clause {
            self.limit(limit_clause, start)?;
        }
        Ok(view)
    }

    /// The query's body must be one plain `SELECT`.
    fn body<'q>(
        &self,
        body: &'q mut SetExpr,
        start: Location,
    ) -> Result<&'q mut Select, PlanError> {
        let message = match body {
            SetExpr::Select(select) => return Ok(select),
            SetExpr::SetOperation {
                left,
                op,
                set_quantifier,
                right: _,
            } => {
                let keyword = match op {
                    SetOperator::Union => Keyword::UNION,
                    SetOperator::Intersect => Keyword::INTERSECT,
                    SetOperator::Except => Keyword::EXCEPT,
                    SetOperator::Minus => Keyword::MINUS,
                };
                let quantifier = match set_quantifier {
                    SetQuantifier::None => String::new(),
                    other => format!(" {other}"),
                };
                let at = self
                    .source
                    .keyword_after(start_or(left.span(), start), keyword);
                return Err(self.source.error(
                    at,
                    format!("{op}{quantifier} is not supported: one SELECT over one view"),
                ));
            }
            SetExpr::Values(_) => {
                return Err(self.source.error(
                    self.source.keyword_after(start, Keyword::VALUES),
                    "VALUES is not supported: one SELECT over one view",
                ))
            }
            SetExpr::Query(_) => {
                "a parenthesised query is not supported: write the SELECT without parentheses"
            }
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                "only SELECT queries are allowed"
            }
            SetExpr::Table(_) => "TABLE is not supported: write SELECT * FROM the view",
        };
        Err(self.source.error(start, message))
    }

    /// The `SELECT`: resolves `FROM` first (names depend on it), then the select list, `WHERE`,
    /// `GROUP BY` and `HAVING`; replaces the view by its definition.
    fn select(&self, select: &mut Select) -> Result<(&'static ViewDef, Scope), PlanError> {
        let Select {
            select_token,
            optimizer_hints,
            distinct,
            select_modifiers,
            top,
            top_before_distinct: _,
            projection,
            exclude,
            into,
            from,
            lateral_views,
            prewhere,
            selection,
            connect_by,
            group_by,
            cluster_by,
            distribute_by,
            sort_by,
            having,
            named_window,
            qualify,
            window_before_qualify: _,
            value_table_mode,
            flavor,
        } = select;
        let source = self.source;
        let at = select_token.0.span.start;
        if !optimizer_hints.is_empty() {
            return Err(source.error(at, "optimizer hints (/*+ … */) are not supported"));
        }
        if top.is_some() {
            return Err(source.error(
                source.keyword_after(at, Keyword::TOP),
                "TOP is not supported: use LIMIT",
            ));
        }
        if into.is_some() {
            return Err(source.error(
                source.keyword_after(at, Keyword::INTO),
                "SELECT INTO is not supported: queries only read",
            ));
        }
        match distinct {
            None | Some(Distinct::Distinct) | Some(Distinct::All) => {}
            Some(Distinct::On(_)) => {
                return Err(source.error(
                    source.keyword_after(at, Keyword::DISTINCT),
                    "DISTINCT ON is not supported: use DISTINCT or GROUP BY",
                ))
            }
        }
        if let Some(first) = named_window.first() {
            return Err(source.error(
                source.keyword_before(start_or(first.0.span, at), Keyword::WINDOW),
                "WINDOW clauses and window functions are not supported",
            ));
        }
        if let Some(qualify) = qualify {
            return Err(source.error(
                source.keyword_before(start_or(qualify.span(), at), Keyword::QUALIFY),
                "QUALIFY is not supported",
            ));
        }
        if select_modifiers.is_some()
            || exclude.is_some()
            || !lateral_views.is_empty()
            || prewhere.is_some()
            || !connect_by.is_empty()
            || !cluster_by.is_empty()
            || !distribute_by.is_empty()
            || !sort_by.is_empty()
            || value_table_mode.is_some()
            || *flavor != SelectFlavor::Standard
        {
            return Err(source.error(at, "this SELECT syntax is not supported"));
        }

        let (view, mut scope) = self.from(from, at)?;
        for item in projection.iter_mut() {
            self.select_item(item, &mut scope, at)?;
        }
        if let Some(selection) = selection {
            Exprs::new(source, &scope, Names::Columns, at).check(selection)?;
        }
        match group_by {
            GroupByExpr::Expressions(exprs, modifiers) => {
                if !modifiers.is_empty() {
                    return Err(source.error(
                        source.keywords_after(at, Keyword::GROUP, Keyword::BY),
                        "GROUP BY modifiers (WITH ROLLUP, …) are not supported",
                    ));
                }
                for expr in exprs {
                    self.output_item(expr, &scope, at)?;
                }
            }
            GroupByExpr::All(_) => {
                return Err(source.error(
                    source.keywords_after(at, Keyword::GROUP, Keyword::BY),
                    "GROUP BY ALL is not supported: list the expressions",
                ))
            }
        }
        if let Some(having) = having {
            Exprs::new(source, &scope, Names::ColumnsOrAliases, at).check(having)?;
        }
        Ok((view, scope))
    }

    /// `FROM`: exactly one view, optionally aliased; replaced by its definition.
    fn from(
        &self,
        from: &mut [TableWithJoins],
        at: Location,
    ) -> Result<(&'static ViewDef, Scope), PlanError> {
        let source = self.source;
        let [TableWithJoins { relation, joins }] = from else {
            return Err(match from.get(1) {
                Some(second) => source.error(
                    start_or(second.relation.span(), at),
                    "only one view per query: comma-separated FROM items (joins) are not supported",
                ),
                None => source.error(
                    at,
                    format!(
                        "a query reads one view: add FROM and one of {}",
                        view_names()
                    ),
                ),
            });
        };
        if let Some(join) = joins.first() {
            return Err(source.error(
                source.keyword_before(start_or(join.relation.span(), at), Keyword::JOIN),
                "joins are not supported: one SELECT over one view",
            ));
        }
        let (name, alias) = match relation {
            TableFactor::Table {
                name,
                alias,
                args,
                with_hints,
                version,
                with_ordinality,
                partitions,
                json_path,
                sample,
                index_directives,
                inheritance,
            } => {
                let name_at = start_or(name.span(), at);
                if args.is_some() {
                    return Err(source.error(
                        name_at,
                        "table functions are not supported: FROM names one view",
                    ));
                }
                if inheritance.is_some() {
                    return Err(source.error(
                        source.keyword_before(name_at, Keyword::ONLY),
                        "ONLY is not supported: FROM names one view",
                    ));
                }
                if sample.is_some() {
                    return Err(source.error(
                        source.keyword_after(name_at, Keyword::TABLESAMPLE),
                        "TABLESAMPLE is not supported",
                    ));
                }
                if !with_hints.is_empty()
                    || version.is_some()
                    || *with_ordinality
                    || !partitions.is_empty()
                    || json_path.is_some()
                    || !index_directives.is_empty()
                {
                    return Err(source.error(
                        name_at,
                        "this FROM syntax is not supported: FROM names one view",
                    ));
                }
                (name, alias)
            }
            TableFactor::Derived { subquery, .. } => {
                return Err(source.error(
                    start_or(subquery.span(), at),
                    "subqueries are not supported: FROM names one view",
                ))
            }
            TableFactor::NestedJoin { .. } => {
                return Err(source.error(
                    start_or(relation.span(), at),
                    "joins are not supported: one SELECT over one view",
                ))
            }
            TableFactor::TableFunction { .. }
            | TableFactor::Function { .. }
            | TableFactor::UNNEST { .. }
            | TableFactor::JsonTable { .. }
            | TableFactor::OpenJsonTable { .. }
            | TableFactor::XmlTable { .. }
            | TableFactor::Pivot { .. }
            | TableFactor::Unpivot { .. }
            | TableFactor::UnpivotExpr { .. }
            | TableFactor::MatchRecognize { .. }
            | TableFactor::SemanticView { .. } => {
                return Err(source.error(
                    start_or(relation.span(), at),
                    "table functions are not supported: FROM names one view",
                ))
            }
        };
        let view = self.view(name, at)?;
        let aliased = alias.is_some();
        let (alias, qualifier) = match alias {
            None => (Ident::new(view.name), view.name.to_string()),
            Some(TableAlias {
                explicit: _,
                name,
                columns,
                at: at_clause,
            }) => {
                if let Some(column) = columns.first() {
                    return Err(source.error(
                        start_or(column.name.span, at),
                        "column aliases on the view are not supported: alias columns in the select list",
                    ));
                }
                if at_clause.is_some() {
                    return Err(
                        source.error(start_or(name.span, at), "this FROM syntax is not supported")
                    );
                }
                let qualifier = normalize(name).ok_or_else(|| bad_quotes(source, name))?;
                (name.clone(), qualifier)
            }
        };
        *relation = TableFactor::Derived {
            lateral: false,
            subquery: Box::new(definition(view)?),
            alias: Some(TableAlias {
                explicit: true,
                name: alias,
                columns: vec![],
                at: None,
            }),
            sample: None,
        };
        Ok((
            view,
            Scope {
                view,
                qualifier,
                aliased,
                aliases: vec![],
                outputs: 0,
            },
        ))
    }

    /// The view `name` refers to: one unqualified name of [`VIEWS`].
    fn view(&self, name: &ObjectName, at: Location) -> Result<&'static ViewDef, PlanError> {
        let source = self.source;
        let at = start_or(name.span(), at);
        let ident = match name.0.as_slice() {
            [ObjectNamePart::Identifier(ident)] => ident,
            _ => {
                return Err(source.error(
                    at,
                    format!(
                        "schema-qualified name {name} is not allowed; write one of {}",
                        view_names()
                    ),
                ))
            }
        };
        let normalized = normalize(ident).ok_or_else(|| bad_quotes(source, ident))?;
        ViewDef::find(&normalized).ok_or_else(|| {
            source.error(
                at,
                format!(
                    "unknown view \"{}\"; the views are {}",
                    ident.value,
                    view_names()
                ),
            )
        })
    }

    /// One item of the select list; records its alias and the number of columns it adds.
    fn select_item(
        &self,
        item: &mut SelectItem,
        scope: &mut Scope,
        at: Location,
    ) -> Result<(), PlanError> {
        let source = self.source;
        match item {
            SelectItem::UnnamedExpr(expr) => {
                let bucket = expr::is_time_bucket(expr);
                Exprs::new(source, scope, Names::Columns, at).check(expr)?;
                scope.outputs += 1;
                if bucket {
                    // `time_bucket(…)` without an alias keeps its name, though it is now `date_bin`.
                    let expr = std::mem::replace(expr, Expr::Value(Value::Null.with_empty_span()));
                    let alias = Ident::new("time_bucket");
                    scope.aliases.push((alias.value.clone(), expr.clone()));
                    *item = SelectItem::ExprWithAlias { expr, alias };
                }
                Ok(())
            }
            SelectItem::ExprWithAlias { expr, alias } => {
                Exprs::new(source, scope, Names::Columns, at).check(expr)?;
                let name = normalize(alias).ok_or_else(|| bad_quotes(source, alias))?;
                scope.aliases.push((name, expr.clone()));
                scope.outputs += 1;
                Ok(())
            }
            SelectItem::ExprWithAliases { expr, .. } => Err(source.error(
                start_or(expr.span(), at),
                "multiple aliases for one expression are not supported",
            )),
            SelectItem::Wildcard(options) => {
                self.wildcard_options(options)?;
                scope.outputs += scope.view.columns.len();
                Ok(())
            }
            SelectItem::QualifiedWildcard(kind, options) => {
                let name = match kind {
                    SelectItemQualifiedWildcardKind::ObjectName(name) => name,
                    SelectItemQualifiedWildcardKind::Expr(expr) => {
                        return Err(source.error(
                            start_or(expr.span(), at),
                            "only the view's alias may precede .*",
                        ))
                    }
                };
                let name_at = start_or(name.span(), at);
                match name.0.as_slice() {
                    [ObjectNamePart::Identifier(ident)]
                        if normalize(ident).as_deref() == Some(scope.qualifier.as_str()) => {}
                    _ => {
                        return Err(source.error(
                            name_at,
                            format!(
                                "unknown table \"{name}\" before .*; {}",
                                qualifier_hint(scope)
                            ),
                        ))
                    }
                }
                self.wildcard_options(options)?;
                scope.outputs += scope.view.columns.len();
                Ok(())
            }
        }
    }

    fn wildcard_options(&self, options: &WildcardAdditionalOptions) -> Result<(), PlanError> {
        let WildcardAdditionalOptions {
            wildcard_token,
            opt_ilike,
            opt_exclude,
            opt_except,
            opt_replace,
            opt_rename,
            opt_alias,
        } = options;
        if opt_ilike.is_some()
            || opt_exclude.is_some()
            || opt_except.is_some()
            || opt_replace.is_some()
            || opt_rename.is_some()
            || opt_alias.is_some()
        {
            return Err(self.source.error(
                wildcard_token.0.span.start,
                "options after * (EXCLUDE, EXCEPT, REPLACE, …) are not supported",
            ));
        }
        Ok(())
    }

    /// One `GROUP BY` or `ORDER BY` expression: an ordinal, a select-list alias, or an expression
    /// over columns and aliases.
    fn output_item(&self, expr: &mut Expr, scope: &Scope, at: Location) -> Result<(), PlanError> {
        if let Expr::Value(ValueWithSpan {
            value: Value::Number(number, false),
            span,
        }) = expr
        {
            return match number.parse::<usize>() {
                Ok(position) if (1..=scope.outputs).contains(&position) => Ok(()),
                _ => Err(self.source.error(
                    start_or(*span, at),
                    format!(
                        "position {number} is not in the select list, which has {} columns",
                        scope.outputs
                    ),
                )),
            };
        }
        if let Expr::Identifier(ident) = expr {
            if let Some(name) = normalize(ident) {
                if !scope.has_column(&name) && scope.alias(&name).is_some() {
                    // PostgreSQL resolves a bare output name here itself.
                    return Ok(());
                }
            }
        }
        Exprs::new(self.source, scope, Names::ColumnsOrAliases, at).check(expr)
    }

    fn order_by(&self, order_by: &mut OrderBy, scope: &Scope) -> Result<(), PlanError> {
        let OrderBy { kind, interpolate } = order_by;
        let at = self
            .source
            .keyword_before(self.source.end(), Keyword::ORDER);
        if interpolate.is_some() {
            return Err(self.source.error(at, "INTERPOLATE is not supported"));
        }
        let exprs = match kind {
            OrderByKind::Expressions(exprs) => exprs,
            OrderByKind::All(_) => {
                return Err(self
                    .source
                    .error(at, "ORDER BY ALL is not supported: list the expressions"))
            }
        };
        for item in exprs {
            expr::order_by_options(self.source, item, at)?;
            self.output_item(&mut item.expr, scope, at)?;
        }
        Ok(())
    }

    /// `LIMIT n` and `OFFSET n`: non-negative integer literals only.
    fn limit(&self, limit_clause: &LimitClause, at: Location) -> Result<(), PlanError> {
        match limit_clause {
            LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            } => {
                if let Some(first) = limit_by.first() {
                    return Err(self
                        .source
                        .error(start_or(first.span(), at), "LIMIT BY is not supported"));
                }
                if let Some(limit) = limit {
                    self.count(limit, Keyword::LIMIT, "LIMIT", at)?;
                }
                if let Some(Offset { value, rows: _ }) = offset {
                    self.count(value, Keyword::OFFSET, "OFFSET", at)?;
                }
                Ok(())
            }
            LimitClause::OffsetCommaLimit { offset, .. } => Err(self.source.error(
                start_or(offset.span(), at),
                "LIMIT offset, count is not supported: use LIMIT count OFFSET offset",
            )),
        }
    }

    fn count(
        &self,
        expr: &Expr,
        keyword: Keyword,
        clause: &str,
        at: Location,
    ) -> Result<(), PlanError> {
        if let Expr::Value(ValueWithSpan {
            value: Value::Number(number, false),
            ..
        }) = expr
        {
            if number.parse::<u64>().is_ok() {
                return Ok(());
            }
        }
        let keyword_at = self
            .source
            .keyword_before(start_or(expr.span(), at), keyword);
        Err(self.source.error(
            self.source.next_after(keyword_at),
            format!("{clause} takes a non-negative integer literal, e.g. {clause} 100"),
        ))
    }
}

/// The view's definition, parsed.
fn definition(view: &ViewDef) -> Result<Query, PlanError> {
    let dialect = PostgreSqlDialect {};
    Parser::new(&dialect)
        .try_with_sql(view.definition)
        .and_then(|mut parser| parser.parse_query())
        .map(|query| *query)
        .map_err(|e| {
            PlanError::new(
                format!(
                    "internal error: the definition of view {} does not parse: {e}",
                    view.name
                ),
                Location::new(1, 1),
                None,
            )
        })
}

/// An identifier as PostgreSQL resolves it: unquoted ones fold to lower case (ASCII only),
/// double-quoted ones are exact. `None` for other quote styles.
fn normalize(ident: &Ident) -> Option<String> {
    match ident.quote_style {
        None => Some(ident.value.to_ascii_lowercase()),
        Some('"') => Some(ident.value.clone()),
        Some(_) => None,
    }
}

fn bad_quotes(source: &Source, ident: &Ident) -> PlanError {
    source.error(
        ident.span.start,
        "only double-quoted identifiers are supported",
    )
}

/// `events, stream_state, …`: every view's name.
fn view_names() -> String {
    VIEWS
        .iter()
        .map(|view| view.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a column may be qualified with in this query.
fn qualifier_hint(scope: &Scope) -> String {
    if scope.aliased {
        format!("the view is aliased as {}", scope.qualifier)
    } else {
        format!("this query reads {}", scope.view.name)
    }
}
