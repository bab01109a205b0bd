//! Expressions of the subset: columns, literals, operators, casts and allowed functions; the
//! `time_bucket` rewrite. Every kind of expression is named below, and all but the listed ones
//! are refused.

use sqlparser::ast::{
    BinaryOperator, CaseWhen, CastKind, CeilFloorKind, DataType, DateTimeField, DuplicateTreatment,
    Expr, ExtractSyntax, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList,
    FunctionArguments, Ident, InTarget, Interval, ObjectName, ObjectNamePart, OrderByExpr,
    OrderByOptions, OrderBySort, Spanned, TimezoneInfo, TypedString, UnaryOperator, Value,
    ValueWithSpan,
};
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Location, Span};

use super::source::{start_or, Source};
use super::{normalize, qualifier_hint, PlanError, Scope};

/// Which names a bare identifier may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Names {
    /// A column of the view (select list, `WHERE`, inside aggregates).
    Columns,
    /// A column of the view, else a select-list alias (`GROUP BY`, `HAVING`, `ORDER BY`).
    ColumnsOrAliases,
}

/// What kind of function a [`Rule`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Takes `DISTINCT` and `FILTER (WHERE …)`.
    Aggregate,
    /// `percentile_*(fraction) WITHIN GROUP (ORDER BY …)`, with `FILTER`.
    OrderedSet,
    /// Plain function of its arguments.
    Scalar,
}

/// An allowed function and how many arguments it takes.
struct Rule {
    name: &'static str,
    kind: Kind,
    min_args: usize,
    max_args: usize,
}

const fn rule(name: &'static str, kind: Kind, min_args: usize, max_args: usize) -> Rule {
    Rule {
        name,
        kind,
        min_args,
        max_args,
    }
}

const ANY: usize = usize::MAX;

/// The functions a query may call; every other one is refused.
const FUNCTIONS: &[Rule] = &[
    rule("count", Kind::Aggregate, 1, 1),
    rule("sum", Kind::Aggregate, 1, 1),
    rule("avg", Kind::Aggregate, 1, 1),
    rule("min", Kind::Aggregate, 1, 1),
    rule("max", Kind::Aggregate, 1, 1),
    rule("percentile_cont", Kind::OrderedSet, 1, 1),
    rule("percentile_disc", Kind::OrderedSet, 1, 1),
    rule("date_trunc", Kind::Scalar, 2, 2),
    rule("time_bucket", Kind::Scalar, 2, 2),
    rule("now", Kind::Scalar, 0, 0),
    rule("coalesce", Kind::Scalar, 1, ANY),
    rule("nullif", Kind::Scalar, 2, 2),
    rule("lower", Kind::Scalar, 1, 1),
    rule("upper", Kind::Scalar, 1, 1),
    rule("length", Kind::Scalar, 1, 1),
    rule("abs", Kind::Scalar, 1, 1),
    rule("round", Kind::Scalar, 1, 2),
    rule("floor", Kind::Scalar, 1, 1),
    rule("ceil", Kind::Scalar, 1, 1),
    rule("greatest", Kind::Scalar, 1, ANY),
    rule("least", Kind::Scalar, 1, ANY),
    rule("jsonb_array_length", Kind::Scalar, 1, 1),
    rule("jsonb_typeof", Kind::Scalar, 1, 1),
];

/// The types casts and typed literals may name, as the error message lists them.
const TYPES: &str = "text, varchar, integer, bigint, smallint, numeric, decimal, real, \
                     double precision, boolean, timestamptz, timestamp, date, interval, uuid, json, jsonb";

/// `time_bucket`'s replacement origin: buckets start at whole multiples of the width since then.
const BUCKET_ORIGIN: &str = "2000-01-01 00:00:00+00";

/// Checks (and rewrites) the expressions of one clause.
pub(super) struct Exprs<'a> {
    source: &'a Source,
    scope: &'a Scope,
    names: Names,
    /// The last location known: where an error points when a node has no span.
    here: Location,
}

impl<'a> Exprs<'a> {
    /// A checker for one clause; `at` is where errors point when no node has a location.
    pub(super) fn new(source: &'a Source, scope: &'a Scope, names: Names, at: Location) -> Self {
        Self {
            source,
            scope,
            names,
            here: at,
        }
    }

    /// Checks `expr` and everything in it; rewrites `time_bucket` and, where aliases are allowed
    /// in an expression, replaces each alias by what it names.
    ///
    /// This recurses once per level of the tree, so each arm hands its work to a method of its
    /// own, kept out of line, and the frame stays small (the depth is bounded by
    /// [`super::MAX_EXPR_DEPTH`]).
    pub(super) fn check(&mut self, expr: &mut Expr) -> Result<(), PlanError> {
        if let Some(at) = shallow_start(expr) {
            self.here = at;
        }
        let replacement = match expr {
            Expr::Identifier(ident) => self.identifier(ident)?,
            Expr::Function(function) => self.function(function)?,
            Expr::CompoundIdentifier(parts) => return self.qualified_column(parts),
            Expr::Value(value) => return self.literal(value),
            Expr::Nested(inner)
            | Expr::IsFalse(inner)
            | Expr::IsNotFalse(inner)
            | Expr::IsTrue(inner)
            | Expr::IsNotTrue(inner)
            | Expr::IsNull(inner)
            | Expr::IsNotNull(inner) => return self.check(inner),
            Expr::BinaryOp { left, op, right } => return self.binary(left, op, right),
            Expr::UnaryOp { op, expr: inner } => return self.unary(op, inner),
            Expr::In {
                expr: inner,
                target,
                negated: _,
                global,
            } => return self.in_list(inner, target, *global),
            Expr::Between {
                expr: inner,
                negated: _,
                low,
                high,
            } => return self.all([inner, low, high]),
            Expr::Like {
                negated: _,
                any,
                expr: inner,
                pattern,
                escape_char,
            }
            | Expr::ILike {
                negated: _,
                any,
                expr: inner,
                pattern,
                escape_char,
            } => return self.like(*any, inner, pattern, escape_char.is_some()),
            Expr::Cast {
                kind,
                expr: inner,
                data_type,
                format,
            } => return self.cast(kind, inner, data_type, format.is_some()),
            Expr::TypedString(typed) => return self.typed_string(typed),
            Expr::Interval(interval) => return self.interval(interval),
            Expr::Extract {
                field,
                syntax,
                expr: inner,
            } => return self.extract(field, syntax, inner),
            Expr::Ceil { expr: inner, field } | Expr::Floor { expr: inner, field } => {
                return self.ceil_floor(inner, field)
            }
            Expr::Case {
                case_token: _,
                end_token: _,
                operand,
                conditions,
                else_result,
            } => return self.case(operand, conditions, else_result),
            Expr::Subquery(_)
            | Expr::Exists { .. }
            | Expr::CompoundFieldAccess { .. }
            | Expr::JsonAccess { .. }
            | Expr::IsUnknown(_)
            | Expr::IsNotUnknown(_)
            | Expr::IsDistinctFrom(..)
            | Expr::IsNotDistinctFrom(..)
            | Expr::SimilarTo { .. }
            | Expr::RLike { .. }
            | Expr::AnyOp { .. }
            | Expr::AllOp { .. }
            | Expr::AtTimeZone { .. }
            | Expr::Collate { .. }
            | Expr::Position { .. }
            | Expr::Substring { .. }
            | Expr::Trim { .. }
            | Expr::Overlay { .. }
            | Expr::Convert { .. }
            | Expr::GroupingSets(_)
            | Expr::Cube(_)
            | Expr::Rollup(_)
            | Expr::Tuple(_)
            | Expr::Array(_)
            | Expr::Struct { .. }
            | Expr::Named { .. }
            | Expr::Dictionary(_)
            | Expr::Map(_)
            | Expr::Wildcard(_)
            | Expr::QualifiedWildcard(..)
            | Expr::Prefixed { .. }
            | Expr::IsJson { .. }
            | Expr::IsNormalized { .. }
            | Expr::MatchAgainst { .. }
            | Expr::OuterJoin(_)
            | Expr::Prior(_)
            | Expr::Lambda(_)
            | Expr::MemberOf(_) => return Err(self.refusal(expr)),
        };
        if let Some(replacement) = replacement {
            *expr = replacement;
        }
        Ok(())
    }

    /// Why a kind of expression outside the subset is refused.
    #[inline(never)]
    fn refusal(&self, expr: &Expr) -> PlanError {
        let at = start_or(expr.span(), self.here);
        let message = match expr {
            Expr::Subquery(_) => "subqueries are not supported: one SELECT over one view",
            Expr::Exists { .. } => {
                return self.source.error(
                    self.source.keyword_before(at, Keyword::EXISTS),
                    "EXISTS subqueries are not supported: one SELECT over one view",
                )
            }
            Expr::CompoundFieldAccess { .. } | Expr::JsonAccess { .. } => {
                "field access and subscripts are not supported; use -> and ->> on JSON columns"
            }
            Expr::IsUnknown(_) | Expr::IsNotUnknown(_) => {
                "IS [NOT] UNKNOWN is not supported; use IS [NOT] NULL"
            }
            Expr::IsDistinctFrom(..) | Expr::IsNotDistinctFrom(..) => {
                "IS [NOT] DISTINCT FROM is not supported; use = or <> with IS [NOT] NULL"
            }
            Expr::SimilarTo { .. } | Expr::RLike { .. } => {
                "SIMILAR TO and regular expressions are not supported; use LIKE or ILIKE"
            }
            Expr::AnyOp { .. } | Expr::AllOp { .. } => "ANY and ALL are not supported; use IN (…)",
            Expr::AtTimeZone { .. } => "AT TIME ZONE is not supported",
            Expr::Collate { .. } => "COLLATE is not supported",
            Expr::Position { .. } => return self.keyword_function_not_allowed("position", at),
            Expr::Substring { .. } => return self.keyword_function_not_allowed("substring", at),
            Expr::Trim { .. } => return self.keyword_function_not_allowed("trim", at),
            Expr::Overlay { .. } => return self.keyword_function_not_allowed("overlay", at),
            Expr::Convert { .. } => "CONVERT is not supported; use CAST",
            Expr::GroupingSets(_) | Expr::Cube(_) | Expr::Rollup(_) => {
                "GROUPING SETS, CUBE and ROLLUP are not supported"
            }
            Expr::Tuple(_) => "row values (a, b) are not supported",
            Expr::Array(_)
            | Expr::Struct { .. }
            | Expr::Named { .. }
            | Expr::Dictionary(_)
            | Expr::Map(_) => "arrays, structs and maps are not supported",
            Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => {
                "* is only allowed in the select list and in count(*)"
            }
            // The remaining kinds (and, were one to arrive here, any accepted kind) are refused.
            _ => "this expression is not supported",
        };
        self.source.error(at, message)
    }

    fn all<const N: usize>(&mut self, exprs: [&mut Box<Expr>; N]) -> Result<(), PlanError> {
        exprs.into_iter().try_for_each(|expr| self.check(expr))
    }

    #[inline(never)]
    fn binary(
        &mut self,
        left: &mut Expr,
        op: &BinaryOperator,
        right: &mut Expr,
    ) -> Result<(), PlanError> {
        self.check(left)?;
        if !binary_operator_allowed(op) {
            let at = self.operator_location(left, right, &op.to_string());
            return Err(self.source.error(
                at,
                format!(
                    "operator {op} is not supported; allowed: = <> != < <= > >= AND OR + - * / % || -> ->> #> #>>"
                ),
            ));
        }
        self.check(right)
    }

    #[inline(never)]
    fn unary(&mut self, op: &UnaryOperator, inner: &mut Expr) -> Result<(), PlanError> {
        match op {
            UnaryOperator::Not | UnaryOperator::Minus | UnaryOperator::Plus => self.check(inner),
            _ => {
                let operand = start_or(inner.span(), self.here);
                Err(self.source.error(
                    self.source.previous(operand),
                    format!("operator {op} is not supported; allowed: NOT, - and +"),
                ))
            }
        }
    }

    #[inline(never)]
    fn in_list(
        &mut self,
        inner: &mut Expr,
        target: &mut InTarget,
        global: bool,
    ) -> Result<(), PlanError> {
        if global {
            return Err(self.error_at(inner.span(), "GLOBAL IN is not supported"));
        }
        match target {
            InTarget::List(list) => {
                self.check(inner)?;
                list.iter_mut().try_for_each(|item| self.check(item))
            }
            InTarget::Subquery(query) => Err(self.error_at(
                query.span(),
                "subqueries are not supported: IN takes a list of values",
            )),
            InTarget::Unnest(_) | InTarget::Table { .. } => Err(self.error_at(
                inner.span(),
                "IN takes a list of values, e.g. IN ('a', 'b')",
            )),
        }
    }

    #[inline(never)]
    fn like(
        &mut self,
        any: bool,
        inner: &mut Expr,
        pattern: &mut Expr,
        escape: bool,
    ) -> Result<(), PlanError> {
        if any {
            return Err(self.error_at(
                inner.span(),
                "LIKE ANY is not supported; combine LIKEs with OR",
            ));
        }
        if escape {
            return Err(self.error_at(
                inner.span(),
                "LIKE … ESCAPE is not supported; \\ escapes % and _",
            ));
        }
        self.check(inner)?;
        self.check(pattern)
    }

    #[inline(never)]
    fn cast(
        &mut self,
        kind: &CastKind,
        inner: &mut Expr,
        data_type: &DataType,
        format: bool,
    ) -> Result<(), PlanError> {
        if !matches!(kind, CastKind::Cast | CastKind::DoubleColon) {
            return Err(self.error_at(
                inner.span(),
                format!("{kind:?} is not supported; use CAST or ::"),
            ));
        }
        if format {
            return Err(self.error_at(inner.span(), "CAST … FORMAT is not supported"));
        }
        self.check(inner)?;
        if !type_allowed(data_type) {
            let at = self.type_location(data_type, inner.span(), true);
            return Err(self.source.error(
                at,
                format!(
                    "cast to {} is not allowed; allowed types: {TYPES}",
                    data_type.to_string().to_lowercase()
                ),
            ));
        }
        Ok(())
    }

    #[inline(never)]
    fn typed_string(&self, typed: &TypedString) -> Result<(), PlanError> {
        let TypedString {
            data_type,
            value,
            uses_odbc_syntax,
        } = typed;
        if *uses_odbc_syntax {
            return Err(self.error_at(value.span, "ODBC escapes { … } are not supported"));
        }
        if !type_allowed(data_type) {
            let at = self.type_location(data_type, value.span, false);
            return Err(self.source.error(
                at,
                format!(
                    "literal of type {} is not allowed; allowed types: {TYPES}",
                    data_type.to_string().to_lowercase()
                ),
            ));
        }
        self.string_literal(
            value,
            "a typed literal takes a single-quoted string, e.g. TIMESTAMPTZ '2026-01-01'",
        )
    }

    #[inline(never)]
    fn interval(&self, interval: &Interval) -> Result<(), PlanError> {
        let Interval {
            value,
            leading_field,
            leading_precision,
            last_field,
            fractional_seconds_precision,
        } = interval;
        if leading_field.is_some()
            || leading_precision.is_some()
            || last_field.is_some()
            || fractional_seconds_precision.is_some()
        {
            return Err(self.error_at(
                value.span(),
                "interval qualifiers are not supported; write INTERVAL '5 minutes'",
            ));
        }
        let message = "INTERVAL takes a single-quoted string, e.g. INTERVAL '5 minutes'";
        match value.as_ref() {
            Expr::Value(value) => self.string_literal(value, message),
            other => Err(self.error_at(other.span(), message)),
        }
    }

    #[inline(never)]
    fn extract(
        &mut self,
        field: &DateTimeField,
        syntax: &ExtractSyntax,
        inner: &mut Expr,
    ) -> Result<(), PlanError> {
        if *syntax != ExtractSyntax::From || !extract_field_allowed(field) {
            let at = self
                .source
                .keyword_before(start_or(inner.span(), self.here), Keyword::EXTRACT);
            return Err(self.source.error(
                at,
                "EXTRACT takes a field and FROM, e.g. EXTRACT(epoch FROM timestamp_utc); \
                 fields: year, quarter, month, week, day, dow, doy, isodow, isoyear, hour, \
                 minute, second, milliseconds, microseconds, epoch, century, decade, millennium, \
                 julian, timezone, timezone_hour, timezone_minute",
            ));
        }
        self.check(inner)
    }

    #[inline(never)]
    fn ceil_floor(&mut self, inner: &mut Expr, field: &CeilFloorKind) -> Result<(), PlanError> {
        match field {
            CeilFloorKind::DateTimeField(DateTimeField::NoDateTime) => self.check(inner),
            _ => Err(self.error_at(inner.span(), "floor and ceil take one numeric argument")),
        }
    }

    #[inline(never)]
    fn case(
        &mut self,
        operand: &mut Option<Box<Expr>>,
        conditions: &mut [CaseWhen],
        else_result: &mut Option<Box<Expr>>,
    ) -> Result<(), PlanError> {
        if let Some(operand) = operand {
            self.check(operand)?;
        }
        for CaseWhen { condition, result } in conditions {
            self.check(condition)?;
            self.check(result)?;
        }
        match else_result {
            Some(else_result) => self.check(else_result),
            None => Ok(()),
        }
    }

    /// A bare name: a column of the view, or (where allowed) a select-list alias, which is then
    /// replaced by its expression.
    fn identifier(&self, ident: &Ident) -> Result<Option<Expr>, PlanError> {
        let name = self.name(ident)?;
        if self.scope.has_column(&name) {
            return Ok(None);
        }
        if self.names == Names::ColumnsOrAliases {
            if let Some(aliased) = self.scope.alias(&name) {
                return Ok(Some(Expr::Nested(Box::new(aliased.clone()))));
            }
        }
        Err(self.unknown_column(ident))
    }

    /// `alias.column` or `view.column`.
    fn qualified_column(&self, parts: &[Ident]) -> Result<(), PlanError> {
        let [qualifier, column] = parts else {
            let at = parts
                .first()
                .map_or(self.here, |ident| start_or(ident.span, self.here));
            return Err(self.source.error(
                at,
                "schema-qualified column references are not supported: write column or alias.column",
            ));
        };
        if self.name(qualifier)? != self.scope.qualifier {
            return Err(self.source.error(
                start_or(qualifier.span, self.here),
                format!(
                    "unknown table \"{}\"; {}",
                    qualifier.value,
                    qualifier_hint(self.scope)
                ),
            ));
        }
        if self.scope.has_column(&self.name(column)?) {
            Ok(())
        } else {
            Err(self.unknown_column(column))
        }
    }

    fn name(&self, ident: &Ident) -> Result<String, PlanError> {
        normalize(ident).ok_or_else(|| {
            self.source.error(
                start_or(ident.span, self.here),
                "only double-quoted identifiers are supported",
            )
        })
    }

    fn unknown_column(&self, ident: &Ident) -> PlanError {
        let aliases = match (self.names, self.scope.aliases.is_empty()) {
            (Names::ColumnsOrAliases, false) => format!(
                "; the select list's aliases are {}",
                self.scope
                    .aliases
                    .iter()
                    .map(|(alias, _)| alias.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => String::new(),
        };
        self.source.error(
            start_or(ident.span, self.here),
            format!(
                "unknown column \"{}\" in {}; its columns are {}{aliases}",
                ident.value,
                self.scope.view.name,
                self.scope.view.columns.join(", ")
            ),
        )
    }

    /// Numbers, single-quoted strings, booleans and NULL.
    fn literal(&self, value: &ValueWithSpan) -> Result<(), PlanError> {
        match &value.value {
            Value::Number(_, false)
            | Value::SingleQuotedString(_)
            | Value::Boolean(_)
            | Value::Null => Ok(()),
            Value::Placeholder(placeholder) => Err(self.source.error_quoting(
                value.span,
                self.here,
                format!(
                    "parameters such as {placeholder} are not allowed: write values as literals (the server binds the tenant itself)"
                ),
            )),
            _ => Err(self.source.error_quoting(
                value.span,
                self.here,
                "this literal is not supported: strings are single-quoted, e.g. 'order.created'",
            )),
        }
    }

    fn string_literal(&self, value: &ValueWithSpan, message: &str) -> Result<(), PlanError> {
        match &value.value {
            Value::SingleQuotedString(_) => Ok(()),
            _ => Err(self
                .source
                .error(start_or(value.span, self.here), message.to_string())),
        }
    }

    /// A call of an allowed function; returns the replacement of `time_bucket`.
    #[inline(never)]
    fn function(&mut self, function: &mut Function) -> Result<Option<Expr>, PlanError> {
        let Function {
            name,
            uses_odbc_syntax,
            parameters,
            args,
            within_group,
            filter,
            null_treatment,
            over,
        } = function;
        let name_span = name.span();
        let at = start_or(name_span, self.here);
        let rule = self.function_rule(name, at)?;
        if over.is_some() {
            let over_at = self.source.keyword_after(at, Keyword::OVER);
            return Err(self.source.error(
                over_at,
                "window functions (OVER) are not supported: use GROUP BY",
            ));
        }
        if *uses_odbc_syntax || !matches!(parameters, FunctionArguments::None) {
            return Err(self
                .source
                .error(at, "this function call syntax is not supported"));
        }
        if null_treatment.is_some() {
            return Err(self
                .source
                .error(at, "IGNORE/RESPECT NULLS is not supported"));
        }
        let FunctionArgumentList {
            duplicate_treatment,
            args,
            clauses,
        } = match args {
            FunctionArguments::List(list) => list,
            FunctionArguments::Subquery(query) => {
                return Err(self.error_at(
                    query.span(),
                    "subqueries are not supported: one SELECT over one view",
                ))
            }
            FunctionArguments::None => {
                return Err(self
                    .source
                    .error(at, format!("{} needs parentheses", rule.name)))
            }
        };
        if let Some(clause) = clauses.first() {
            return Err(self.error_at(
                clause.span(),
                format!(
                    "{} takes no ORDER BY, LIMIT or other clauses in its arguments",
                    rule.name
                ),
            ));
        }
        match duplicate_treatment {
            None => {}
            Some(DuplicateTreatment::Distinct) if rule.kind == Kind::Aggregate => {}
            Some(treatment) => {
                return Err(self
                    .source
                    .error(at, format!("{} does not take {treatment}", rule.name)))
            }
        }
        if args.len() < rule.min_args || args.len() > rule.max_args {
            let expected = match (rule.min_args, rule.max_args) {
                (min, max) if min == max => format!("{min}"),
                (min, ANY) => format!("at least {min}"),
                (min, max) => format!("{min} to {max}"),
            };
            return Err(self.source.error(
                at,
                format!(
                    "{} takes {expected} argument(s), not {}",
                    rule.name,
                    args.len()
                ),
            ));
        }
        if rule.kind == Kind::OrderedSet {
            if within_group.len() != 1 {
                return Err(self.source.error(
                    at,
                    format!(
                        "{} needs WITHIN GROUP (ORDER BY one expression), e.g. {}(0.95) WITHIN GROUP (ORDER BY lag_seconds)",
                        rule.name, rule.name
                    ),
                ));
            }
        } else if !within_group.is_empty() {
            return Err(self
                .source
                .error(at, format!("{} does not take WITHIN GROUP", rule.name)));
        }
        if filter.is_some() && rule.kind == Kind::Scalar {
            return Err(self.source.error(
                at,
                format!(
                    "{} is not an aggregate: FILTER applies to aggregates only",
                    rule.name
                ),
            ));
        }

        // Inside an aggregate, names are the rows' columns; a scalar function keeps the clause's.
        let outer_names = self.names;
        if rule.kind != Kind::Scalar {
            self.names = Names::Columns;
        }
        let checked = self.function_arguments(rule, args, at, duplicate_treatment.is_some());
        let checked = checked.and_then(|()| {
            for item in within_group.iter_mut() {
                order_by_options(self.source, item, at)?;
                self.check(&mut item.expr)?;
            }
            match filter {
                Some(filter) => self.check(filter),
                None => Ok(()),
            }
        });
        self.names = outer_names;
        checked?;

        if rule.name != "time_bucket" {
            return Ok(None);
        }
        let mut exprs = args.drain(..).filter_map(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => Some(expr),
            _ => None,
        });
        match (exprs.next(), exprs.next()) {
            (Some(width), Some(timestamp)) => Ok(Some(date_bin(name_span, width, timestamp))),
            _ => Err(self
                .source
                .error(at, "time_bucket takes (interval, timestamp)")),
        }
    }

    /// The allowed function `name` names.
    fn function_rule(&self, name: &ObjectName, at: Location) -> Result<&'static Rule, PlanError> {
        let ident = match name.0.as_slice() {
            [ObjectNamePart::Identifier(ident)] => ident,
            _ => {
                return Err(self.source.error(
                    at,
                    format!(
                    "function {name} is not allowed: function names are not qualified; allowed: {}",
                    function_names()
                ),
                ))
            }
        };
        let normalized = self.name(ident)?;
        FUNCTIONS
            .iter()
            .find(|rule| rule.name == normalized)
            .ok_or_else(|| self.function_not_allowed(&ident.value, at))
    }

    fn function_arguments(
        &mut self,
        rule: &Rule,
        args: &mut [FunctionArg],
        at: Location,
        distinct: bool,
    ) -> Result<(), PlanError> {
        for (index, arg) in args.iter_mut().enumerate() {
            let expr = match arg {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => expr,
                FunctionArg::Unnamed(FunctionArgExpr::Wildcard)
                    if rule.name == "count" && !distinct =>
                {
                    continue
                }
                FunctionArg::Unnamed(
                    FunctionArgExpr::Wildcard
                    | FunctionArgExpr::QualifiedWildcard(_)
                    | FunctionArgExpr::WildcardWithOptions(_),
                ) => {
                    return Err(self.source.error(
                        at,
                        format!(
                            "{} does not take * as an argument; count(*) does",
                            rule.name
                        ),
                    ))
                }
                FunctionArg::Named { .. } | FunctionArg::ExprNamed { .. } => {
                    return Err(self.error_at(arg.span(), "named arguments are not supported"))
                }
            };
            match (rule.name, index) {
                ("percentile_cont" | "percentile_disc", 0) => self.fraction(rule, expr)?,
                ("date_trunc", 0) => match expr {
                    Expr::Value(value) => self.string_literal(
                        value,
                        "date_trunc's first argument is a unit as a string literal, e.g. 'hour'",
                    )?,
                    _ => return Err(self.error_at(
                        expr.span(),
                        "date_trunc's first argument is a unit as a string literal, e.g. 'hour'",
                    )),
                },
                _ => self.check(expr)?,
            }
        }
        Ok(())
    }

    /// `percentile_*`'s argument: a number literal between 0 and 1.
    fn fraction(&self, rule: &Rule, expr: &Expr) -> Result<(), PlanError> {
        if let Expr::Value(ValueWithSpan {
            value: Value::Number(number, false),
            ..
        }) = expr
        {
            if number
                .parse::<f64>()
                .is_ok_and(|fraction| (0.0..=1.0).contains(&fraction))
            {
                return Ok(());
            }
        }
        Err(self.error_at(
            expr.span(),
            format!(
                "{} takes one fraction between 0 and 1, e.g. {}(0.95)",
                rule.name, rule.name
            ),
        ))
    }

    fn function_not_allowed(&self, name: &str, at: Location) -> PlanError {
        self.source.error(
            at,
            format!(
                "function {name} is not allowed; allowed: {}",
                function_names()
            ),
        )
    }

    /// `substring(…)` and the like, which the parser reads as expressions of their own.
    fn keyword_function_not_allowed(&self, name: &str, at: Location) -> PlanError {
        self.function_not_allowed(name, self.source.word_before(at, name))
    }

    /// Where a binary operator's token is: between its operands.
    fn operator_location(&self, left: &Expr, right: &Expr, text: &str) -> Location {
        let from = left.span().end;
        let until = start_or(right.span(), self.here);
        self.source.text_between(from, until, text).unwrap_or(until)
    }

    /// Where a refused type's name is: its own span for a named type, else the first word of
    /// its name, after (cast) or before (typed literal) the value.
    fn type_location(&self, data_type: &DataType, value: Span, after: bool) -> Location {
        if let DataType::Custom(name, _) = data_type {
            if name.span().start.line != 0 {
                return name.span().start;
            }
        }
        let rendered = data_type.to_string();
        let word = rendered
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .find(|word| !word.is_empty())
            .unwrap_or_default();
        let from = start_or(value, self.here);
        if after {
            self.source.word_after(from, word)
        } else {
            self.source.word_before(from, word)
        }
    }

    fn error_at(&self, span: Span, message: impl Into<String>) -> PlanError {
        self.source.error_in(span, self.here, message)
    }
}

/// Where `expr` starts, when that is known without walking it (`Spanned::span` walks the whole
/// subtree, and the checks recurse once per level).
fn shallow_start(expr: &Expr) -> Option<Location> {
    let at = match expr {
        Expr::Identifier(ident) => ident.span.start,
        Expr::CompoundIdentifier(parts) => parts.first()?.span.start,
        Expr::Value(value) => value.span.start,
        Expr::TypedString(typed) => typed.value.span.start,
        Expr::Case { case_token, .. } => case_token.0.span.start,
        Expr::Function(Function { name, .. }) => match name.0.first()? {
            ObjectNamePart::Identifier(ident) => ident.span.start,
            ObjectNamePart::Function(function) => function.name.span.start,
        },
        // Other kinds start with a child, whose own start the walk reaches next.
        _ => return None,
    };
    (at.line != 0).then_some(at)
}

/// `ASC`/`DESC` and `NULLS FIRST/LAST` only.
pub(super) fn order_by_options(
    source: &Source,
    item: &OrderByExpr,
    at: Location,
) -> Result<(), PlanError> {
    let OrderByExpr {
        expr,
        options: OrderByOptions {
            sort,
            nulls_first: _,
        },
        with_fill,
    } = item;
    if matches!(sort, Some(OrderBySort::Using(_))) {
        return Err(source.error(
            source.keyword_after(start_or(expr.span(), at), Keyword::USING),
            "ORDER BY … USING is not supported: use ASC or DESC",
        ));
    }
    if with_fill.is_some() {
        return Err(source.error(start_or(expr.span(), at), "WITH FILL is not supported"));
    }
    Ok(())
}

/// Whether `expr` is a call of `time_bucket` (before the rewrite).
pub(super) fn is_time_bucket(expr: &Expr) -> bool {
    match expr {
        Expr::Function(Function { name, .. }) => matches!(
            name.0.as_slice(),
            [ObjectNamePart::Identifier(ident)] if normalize(ident).as_deref() == Some("time_bucket")
        ),
        _ => false,
    }
}

/// `time_bucket(width, ts)` → `date_bin(width, ts, TIMESTAMPTZ '2000-01-01 00:00:00+00')`.
fn date_bin(span: Span, width: Expr, timestamp: Expr) -> Expr {
    let origin = Expr::TypedString(TypedString {
        data_type: DataType::Timestamp(None, TimezoneInfo::Tz),
        value: Value::SingleQuotedString(BUCKET_ORIGIN.to_string()).with_empty_span(),
        uses_odbc_syntax: false,
    });
    let arg = |expr| FunctionArg::Unnamed(FunctionArgExpr::Expr(expr));
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::with_span(span, "date_bin")]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: vec![arg(width), arg(timestamp), arg(origin)],
            clauses: vec![],
        }),
        within_group: vec![],
        filter: None,
        null_treatment: None,
        over: None,
    })
}

fn binary_operator_allowed(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq
            | BinaryOperator::And
            | BinaryOperator::Or
            | BinaryOperator::Plus
            | BinaryOperator::Minus
            | BinaryOperator::Multiply
            | BinaryOperator::Divide
            | BinaryOperator::Modulo
            | BinaryOperator::StringConcat
            | BinaryOperator::Arrow
            | BinaryOperator::LongArrow
            | BinaryOperator::HashArrow
            | BinaryOperator::HashLongArrow
    )
}

/// The types of [`TYPES`].
fn type_allowed(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Text
            | DataType::Varchar(_)
            | DataType::CharacterVarying(_)
            | DataType::Integer(None)
            | DataType::Int(None)
            | DataType::Int4(None)
            | DataType::BigInt(None)
            | DataType::Int8(None)
            | DataType::SmallInt(None)
            | DataType::Numeric(_)
            | DataType::Decimal(_)
            | DataType::Real
            | DataType::DoublePrecision
            | DataType::Float8
            | DataType::Boolean
            | DataType::Bool
            | DataType::Timestamp(_, _)
            | DataType::Date
            | DataType::Interval {
                fields: None,
                precision: None
            }
            | DataType::Uuid
            | DataType::JSON
            | DataType::JSONB
    )
}

fn extract_field_allowed(field: &DateTimeField) -> bool {
    matches!(
        field,
        DateTimeField::Year
            | DateTimeField::Quarter
            | DateTimeField::Month
            | DateTimeField::Week(None)
            | DateTimeField::Day
            | DateTimeField::Dow
            | DateTimeField::Doy
            | DateTimeField::Isodow
            | DateTimeField::Isoyear
            | DateTimeField::Hour
            | DateTimeField::Minute
            | DateTimeField::Second
            | DateTimeField::Millisecond
            | DateTimeField::Milliseconds
            | DateTimeField::Microsecond
            | DateTimeField::Microseconds
            | DateTimeField::Epoch
            | DateTimeField::Century
            | DateTimeField::Decade
            | DateTimeField::Millennium
            | DateTimeField::Julian
            | DateTimeField::Timezone
            | DateTimeField::TimezoneHour
            | DateTimeField::TimezoneMinute
    )
}

/// `count, sum, …`: every allowed function's name.
fn function_names() -> String {
    FUNCTIONS
        .iter()
        .map(|rule| rule.name)
        .collect::<Vec<_>>()
        .join(", ")
}
