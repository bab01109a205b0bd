//! The planner's tests: what the subset accepts (and how it is rewritten), what it refuses and
//! where the error points.

use sqlparser::ast::{SetExpr, Statement, TableFactor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::{plan, PlanError, PlannedQuery, ViewDef, MAX_EXPR_DEPTH, MAX_SQL_BYTES, VIEWS};

/// Plans `sql`, which must be accepted, and checks the result's invariants: it parses as one
/// `SELECT` whose only `FROM` item is the view's definition, and its only parameter is `$1`.
fn accept(sql: &str) -> PlannedQuery {
    let planned = plan(sql).unwrap_or_else(|e| {
        panic!(
            "{sql:?} was refused at {}:{} ({:?}): {e}",
            e.line, e.column, e.token
        )
    });
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, &planned.sql).unwrap_or_else(|e| {
        panic!(
            "the rewrite of {sql:?} does not parse: {e}\n{}",
            planned.sql
        )
    });
    let [Statement::Query(query)] = statements.as_slice() else {
        panic!("the rewrite of {sql:?} is not one query: {}", planned.sql);
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        panic!("the rewrite of {sql:?} is not one SELECT: {}", planned.sql);
    };
    let [from] = select.from.as_slice() else {
        panic!(
            "the rewrite of {sql:?} reads more than one relation: {}",
            planned.sql
        );
    };
    assert!(from.joins.is_empty(), "the rewrite of {sql:?} joins");
    let TableFactor::Derived { subquery, .. } = &from.relation else {
        panic!(
            "the rewrite of {sql:?} does not read a view definition: {}",
            planned.sql
        );
    };
    let [name] = planned.views.as_slice() else {
        panic!("{sql:?} reads {:?}", planned.views);
    };
    let view = ViewDef::find(name).expect("a known view");
    assert_eq!(
        subquery.to_string(),
        view.definition,
        "{sql:?} reads a different relation"
    );

    let placeholders: Vec<String> = Tokenizer::new(&PostgreSqlDialect {}, &planned.sql)
        .tokenize()
        .expect("the rewrite tokenizes")
        .into_iter()
        .filter_map(|token| match token {
            Token::Placeholder(p) => Some(p),
            _ => None,
        })
        .collect();
    let expected: &[&str] = if view.tenant_scoped { &["$1"] } else { &[] };
    assert_eq!(placeholders, expected, "parameters of {}", planned.sql);
    assert_eq!(planned.binds_tenant(), view.tenant_scoped);
    planned
}

/// Plans `sql`, which must be refused.
fn reject(sql: &str) -> PlanError {
    match plan(sql) {
        Ok(planned) => panic!("{sql:?} was accepted: {}", planned.sql),
        Err(e) => e,
    }
}

/// `(line, column)` of the first `needle` in `sql`, 1-based, in characters.
fn position(sql: &str, needle: &str) -> (u64, u64) {
    let offset = sql
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {sql:?}"));
    let before = &sql[..offset];
    let line = before.matches('\n').count() as u64 + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() as u64 + 1)
}

/// Checks that `sql` is refused at the first `needle`, quoting the token there (the start of
/// `needle`), with a message containing `message`.
fn reject_at(sql: &str, needle: &str, message: &str) -> PlanError {
    let e = reject(sql);
    assert_eq!(
        (e.line, e.column),
        position(sql, needle),
        "location of {sql:?}: {e}"
    );
    let token = e.token.clone().unwrap_or_default();
    assert!(
        !token.is_empty() && needle.starts_with(&token),
        "token of {sql:?}: {token:?} for {needle:?}: {e}"
    );
    assert!(e.message.contains(message), "message of {sql:?}: {e}");
    e
}

/// `(<definition>) AS <alias>`, as the rewrite puts it in `FROM`.
fn derived(view: &str, alias: &str) -> String {
    let view = ViewDef::find(view).expect("a known view");
    format!("FROM ({}) AS {alias}", view.definition)
}

// ---------------------------------------------------------------------------------------------
// The views.

#[test]
fn every_definition_parses_renders_as_written_and_lists_its_columns() {
    for view in VIEWS {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, view.definition)
            .unwrap_or_else(|e| panic!("{}: {e}", view.name));
        let [Statement::Query(query)] = statements.as_slice() else {
            panic!("{} is not one query", view.name);
        };
        assert_eq!(
            query.to_string(),
            view.definition,
            "{} is not canonical",
            view.name
        );
        let SetExpr::Select(select) = query.body.as_ref() else {
            panic!("{} is not a SELECT", view.name);
        };
        let names: Vec<String> = select
            .projection
            .iter()
            .map(|item| match item {
                sqlparser::ast::SelectItem::UnnamedExpr(expr) => expr.to_string(),
                sqlparser::ast::SelectItem::ExprWithAlias { alias, .. } => alias.value.clone(),
                other => panic!("{}: unexpected {other}", view.name),
            })
            .collect();
        assert_eq!(names, view.columns, "columns of {}", view.name);
        assert_eq!(
            view.definition.contains("WHERE tenant_id = $1"),
            view.tenant_scoped,
            "tenant binding of {}",
            view.name
        );
        assert!(!view.description.is_empty());
    }
}

#[test]
fn every_view_can_be_read_whole() {
    for view in VIEWS {
        let planned = accept(&format!("select * from {}", view.name));
        assert_eq!(
            planned.sql,
            format!("SELECT * {}", derived(view.name, view.name))
        );
        assert_eq!(planned.views, [view.name]);
        assert_eq!(planned.sql.contains("tenant_id = $1"), view.tenant_scoped);
    }
}

// ---------------------------------------------------------------------------------------------
// Accepted: the rewrite.

#[test]
fn the_example_is_rewritten_to_read_the_tenants_events() {
    let planned = accept("select type, count(*) from events group by type");
    assert_eq!(
        planned.sql,
        "SELECT type, count(*) FROM (SELECT id, tenant_id, source, type, stream_key, \
         timestamp_utc, schema_version, payload_jsonb AS payload, received_utc, processed_utc, \
         trace_id, idempotency_key, source_partition, source_offset FROM events \
         WHERE tenant_id = $1) AS events GROUP BY type"
    );
    assert_eq!(planned.views, ["events"]);
    assert!(planned.binds_tenant());
}

#[test]
fn an_alias_names_the_derived_view_and_qualifies_columns() {
    let planned = accept(
        "select e.payload->>'orderId' as order_id from events e where e.type = 'order.created'",
    );
    assert_eq!(
        planned.sql,
        format!(
            "SELECT e.payload ->> 'orderId' AS order_id {} WHERE e.type = 'order.created'",
            derived("events", "e")
        )
    );
    accept("select events.type from events");
    accept("select \"E\".type from events as \"E\"");
}

#[test]
fn view_names_fold_case_unless_quoted() {
    let quoted = accept("select type from \"events\"");
    assert!(quoted.sql.contains(&derived("events", "events")));
    let mixed = accept("select TYPE, EvEnTs.Source from EvEnTs");
    assert_eq!(
        mixed.sql,
        format!("SELECT TYPE, EvEnTs.Source {}", derived("events", "events"))
    );
}

#[test]
fn an_or_cannot_escape_the_tenant_binding() {
    let planned = accept("select * from events where tenant_id = 'other' OR 1=1");
    assert_eq!(
        planned.sql,
        format!(
            "SELECT * {} WHERE tenant_id = 'other' OR 1 = 1",
            derived("events", "events")
        )
    );
    assert!(planned
        .sql
        .contains("FROM events WHERE tenant_id = $1) AS events"));
}

#[test]
fn comments_are_dropped_and_a_trailing_semicolon_is_fine() {
    let planned = accept("/* daily */ select type -- the type\n from events /* all */ ;");
    assert_eq!(
        planned.sql,
        format!("SELECT type {}", derived("events", "events"))
    );
    accept("select type from events;\n-- done\n");
}

#[test]
fn select_list_forms() {
    accept("select distinct type from events");
    accept("select all type from events");
    accept("select e.* from events e");
    accept("select *, payload -> 'a' as a from events");
    accept("select partition, lag_records from pipeline_health");
    accept("select reason, dead_letters from dlq_reasons order by dead_letters desc");
}

#[test]
fn literals() {
    let planned = accept(
        "select 1, -2.5, 1e3, 'it''s', true, false, null, TIMESTAMPTZ '2026-01-01', \
         interval '5 minutes', '1 hour'::interval from events",
    );
    assert!(planned.sql.starts_with(
        "SELECT 1, -2.5, 1e3, 'it''s', true, false, NULL, TIMESTAMPTZ '2026-01-01', \
         INTERVAL '5 minutes', '1 hour'::INTERVAL FROM ("
    ));
    accept("select * from events where timestamp_utc > now() - interval '5 minutes'");
    accept("select * from events where received_utc >= timestamp '2026-01-01 00:00:00'");
    accept("select * from events where timestamp_utc::date = date '2026-01-01'");
}

#[test]
fn operators() {
    accept(
        "select (source_offset + 1) * 2 - 3 / 4 % 5, type || ':' || stream_key, \
         payload #> '{a,b}', payload #>> '{a,b}', payload -> 'items' -> 0 from events \
         where not (schema_version <> 1 or schema_version != 2) and source_offset < 10 \
         and source_offset <= 10 and source_offset > -1 and source_offset >= +0",
    );
}

#[test]
fn predicates() {
    accept(
        "select * from events where type in ('a', 'b') and source not in ('x') \
         and timestamp_utc between now() - interval '1 day' and now() \
         and source_offset not between 1 and 2 \
         and type like 'order.%' and source ilike 'SHOP%' and stream_key not like 'test-%' \
         and stream_key not ilike 'x%' and trace_id is null and processed_utc is not null \
         and (schema_version = 1) is true and (schema_version = 2) is not true \
         and (schema_version = 3) is false and (schema_version = 4) is not false",
    );
}

#[test]
fn casts_to_every_allowed_type() {
    for ty in [
        "text",
        "varchar",
        "varchar(20)",
        "character varying",
        "integer",
        "int",
        "int4",
        "bigint",
        "int8",
        "smallint",
        "numeric",
        "numeric(10, 2)",
        "decimal",
        "decimal(5)",
        "real",
        "double precision",
        "float8",
        "boolean",
        "bool",
        "timestamptz",
        "timestamp with time zone",
        "timestamp",
        "date",
        "interval",
        "uuid",
        "json",
        "jsonb",
    ] {
        accept(&format!("select source_offset::{ty} from events"));
        accept(&format!("select cast(source_offset as {ty}) from events"));
    }
}

#[test]
fn case_and_extract() {
    accept(
        "select case when source_offset > 10 then 'big' when source_offset > 1 then 'small' \
         else 'none' end, case type when 'a' then 1 end, extract(epoch from timestamp_utc), \
         extract(hour from timestamp_utc), extract(dow from received_utc) from events",
    );
}

#[test]
fn aggregates() {
    let planned = accept(
        "select count(*), count(distinct stream_key), sum(source_offset), avg(source_offset), \
         min(timestamp_utc), max(timestamp_utc), \
         count(*) filter (where type = 'order.created') as created from events",
    );
    assert!(planned
        .sql
        .contains("count(*) FILTER (WHERE type = 'order.created') AS created"));
    accept("select COUNT(*), Sum(source_offset) from events");
}

#[test]
fn percentiles_take_within_group() {
    let planned = accept(
        "select percentile_cont(0.95) within group (order by lag_seconds), \
         percentile_disc(0.5) within group (order by lag_records desc) from pipeline_health",
    );
    assert!(planned
        .sql
        .contains("percentile_cont(0.95) WITHIN GROUP (ORDER BY lag_seconds)"));
    assert!(!planned.binds_tenant(), "pipeline_health is global");
    assert!(!planned.sql.contains('$'));
}

#[test]
fn scalar_functions() {
    accept(
        "select date_trunc('hour', timestamp_utc), now(), coalesce(trace_id, 'none'), \
         nullif(source, ''), lower(type), upper(type), length(stream_key), abs(source_offset), \
         round(source_offset / 3.0), round(source_offset / 3.0, 2), floor(source_offset / 2), \
         ceil(source_offset / 2), greatest(received_utc, processed_utc), \
         least(received_utc, processed_utc), jsonb_array_length(payload -> 'items'), \
         jsonb_typeof(payload) from events",
    );
}

#[test]
fn time_bucket_becomes_date_bin_and_keeps_its_name() {
    let planned = accept(
        "select time_bucket('5 minutes', timestamp_utc), count(*) from events \
         group by time_bucket order by 1",
    );
    assert_eq!(
        planned.sql,
        format!(
            "SELECT date_bin('5 minutes', timestamp_utc, TIMESTAMPTZ '2000-01-01 00:00:00+00') \
             AS time_bucket, count(*) {} GROUP BY time_bucket ORDER BY 1",
            derived("events", "events")
        )
    );

    let aliased = accept(
        "select time_bucket(interval '1 hour', timestamp_utc) as hour, count(*) from events \
         group by time_bucket(interval '1 hour', timestamp_utc)",
    );
    assert!(aliased.sql.starts_with(
        "SELECT date_bin(INTERVAL '1 hour', timestamp_utc, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour,"
    ));
    assert!(aliased.sql.ends_with(
        "GROUP BY date_bin(INTERVAL '1 hour', timestamp_utc, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
    ));
}

#[test]
fn group_by_and_order_by_take_ordinals_aliases_and_expressions() {
    let planned = accept(
        "select type, date_trunc('day', timestamp_utc) as day, count(*) as n from events \
         group by 1, day order by n desc nulls last, 1 asc, lower(type) nulls first",
    );
    assert!(planned
        .sql
        .ends_with("GROUP BY 1, day ORDER BY n DESC NULLS LAST, 1 ASC, lower(type) NULLS FIRST"));
}

#[test]
fn an_alias_inside_an_expression_is_replaced_by_what_it_names() {
    let planned =
        accept("select type, count(*) as n from events group by type having n > 10 order by n * 2");
    assert!(
        planned
            .sql
            .ends_with("GROUP BY type HAVING (count(*)) > 10 ORDER BY (count(*)) * 2"),
        "{}",
        planned.sql
    );
}

#[test]
fn limit_and_offset() {
    let planned = accept("select * from events order by timestamp_utc desc limit 100 offset 20");
    assert!(planned
        .sql
        .ends_with("ORDER BY timestamp_utc DESC LIMIT 100 OFFSET 20"));
    accept("select * from events limit 0");
    accept("select * from events limit all");
    accept("select * from events offset 5 rows");
    accept("select * from events offset 5");
}

#[test]
fn global_views_have_no_parameter() {
    let planned =
        accept("select * from slo_samples where window_start_utc > now() - interval '1 day'");
    assert!(!planned.binds_tenant());
    assert!(!planned.sql.contains("$1"));
}

// ---------------------------------------------------------------------------------------------
// Refused: one SELECT over one view.

#[test]
fn set_operations_are_refused_at_their_keyword() {
    reject_at(
        "select type from events union select type from dead_letter",
        "union",
        "UNION is not supported: one SELECT over one view",
    );
    reject_at(
        "select type from events\nUNION ALL select relname from pg_catalog.pg_class",
        "UNION",
        "UNION ALL is not supported",
    );
    reject_at(
        "select id from events intersect select event_id from dead_letter",
        "intersect",
        "INTERSECT is not supported",
    );
    reject_at(
        "select id from events except select event_id from dead_letter",
        "except",
        "EXCEPT is not supported",
    );
}

#[test]
fn ctes_are_refused() {
    reject_at(
        "with x as (select * from events) select * from x",
        "with",
        "WITH (common table expressions) is not supported",
    );
    reject_at(
        "WITH RECURSIVE r AS (select 1) select * from events",
        "WITH",
        "WITH",
    );
}

#[test]
fn subqueries_are_refused_everywhere() {
    reject_at(
        "select * from (select * from events) s",
        "select * from events",
        "subqueries are not supported",
    );
    reject_at(
        "select * from events where id = (select max(id) from events)",
        "select max",
        "subqueries are not supported",
    );
    reject_at(
        "select (select count(*) from dead_letter) from events",
        "select count",
        "subqueries are not supported",
    );
    reject_at(
        "select * from events where id in (select event_id from dead_letter)",
        "select event_id",
        "subqueries are not supported: IN takes a list of values",
    );
    reject_at(
        "select * from events where not exists (select 1 from dead_letter)",
        "exists",
        "EXISTS subqueries are not supported",
    );
    reject_at(
        "select count((select 1)) from events",
        "select 1",
        "subqueries are not supported",
    );
}

#[test]
fn joins_are_refused() {
    reject_at(
        "select * from events e join dead_letter d on d.event_id = e.id",
        "join",
        "joins are not supported",
    );
    reject_at(
        "select * from events e left outer join dead_letter d using (id)",
        "join",
        "joins are not supported",
    );
    reject_at(
        "select * from events, dead_letter",
        "dead_letter",
        "only one view per query",
    );
    reject_at(
        "select * from events, lateral (select 1) x",
        "select 1",
        "only one view per query",
    );
}

#[test]
fn other_from_items_are_refused() {
    reject_at(
        "select * from generate_series(1, 10)",
        "generate_series",
        "table functions are not supported",
    );
    reject_at("select * from only events", "only", "ONLY is not supported");
    reject_at(
        "select * from events tablesample system (10)",
        "tablesample",
        "TABLESAMPLE is not supported",
    );
    reject_at(
        "select * from events as e(a, b)",
        "a, b",
        "column aliases on the view are not supported",
    );
    let e = reject("select 1");
    assert!(e.message.contains("a query reads one view"), "{e}");
    assert!(
        e.message.contains("events, stream_state, slo_samples"),
        "{e}"
    );
}

#[test]
fn schema_qualified_names_are_refused() {
    reject_at(
        "select * from public.events",
        "public",
        "schema-qualified name public.events is not allowed",
    );
    reject_at(
        "select relname from pg_catalog.pg_class",
        "pg_catalog",
        "schema-qualified name pg_catalog.pg_class is not allowed",
    );
    reject_at(
        "select * from information_schema.tables",
        "information_schema",
        "schema-qualified",
    );
    reject_at(
        "select public.events.type from events",
        "public",
        "schema-qualified column references are not supported",
    );
}

#[test]
fn unknown_views_are_refused_with_the_list() {
    let e = reject_at(
        "select * from pg_class",
        "pg_class",
        "unknown view \"pg_class\"",
    );
    assert!(e.message.ends_with(
        "the views are events, stream_state, slo_samples, dead_letter, pipeline_health, dlq_reasons"
    ));
    reject_at(
        "select * from \"EVENTS\"",
        "\"EVENTS\"",
        "unknown view \"EVENTS\"",
    );
    reject_at("select * from base_events", "base_events", "unknown view");
}

#[test]
fn unknown_columns_are_refused_with_the_views_columns() {
    let e = reject_at(
        "select type, tenant from events",
        "tenant",
        "unknown column \"tenant\" in events; its columns are id, tenant_id, source, type,",
    );
    assert!(e.message.contains("source_offset"));
    reject_at(
        "select e.nope from events e",
        "nope",
        "unknown column \"nope\" in events",
    );
    reject_at(
        "select \"Type\" from events",
        "\"Type\"",
        "unknown column \"Type\"",
    );
    reject_at(
        "select reason_code from dead_letter",
        "reason_code",
        "its columns are id, tenant_id, reason,",
    );
    // A view's name alone would be a whole-row reference.
    reject_at(
        "select events from events",
        "events",
        "unknown column \"events\"",
    );
    // A select-list alias is not a column in WHERE.
    reject_at(
        "select type as t from events where t = 'a'",
        "t =",
        "unknown column \"t\"",
    );
}

#[test]
fn qualifiers_must_name_the_view_as_the_query_does() {
    reject_at(
        "select d.type from events e",
        "d",
        "unknown table \"d\"; the view is aliased as e",
    );
    reject_at(
        "select events.type from events e",
        "events",
        "the view is aliased as e",
    );
    reject_at(
        "select x.* from events",
        "x",
        "unknown table \"x\" before .*; this query reads events",
    );
}

// ---------------------------------------------------------------------------------------------
// Refused: one statement, and it is a query.

#[test]
fn other_statements_are_refused_at_their_first_word() {
    for (sql, word) in [
        ("insert into events (id) values (1)", "INSERT"),
        ("update events set type = 'x'", "UPDATE"),
        ("delete from events", "DELETE"),
        ("drop table events", "DROP"),
        ("set role postgres", "SET"),
        ("copy events to '/tmp/x'", "COPY"),
        ("  explain select * from events", "EXPLAIN"),
        ("table events", "TABLE"),
    ] {
        let e = reject(sql);
        assert_eq!((e.line, e.column), position(sql, &sql.trim()[..3]), "{sql}");
        assert!(
            e.message
                .starts_with(&format!("{word} statements are not supported")),
            "{sql}: {e}"
        );
    }
}

#[test]
fn stacked_statements_are_refused() {
    reject_at(
        "select 1 from events; select 2 from events",
        "select 2",
        "only one statement is allowed",
    );
    let e = reject_at(
        "select 1 from events; -- x\n delete from events",
        "delete",
        "only one statement is allowed; found delete after ';'",
    );
    assert_eq!((e.line, e.column), (2, 2));
    reject_at(
        "select 1 from events /* ; */; /* */ drop table events",
        "drop",
        "only one statement is allowed",
    );
    let e = reject("select 1 from events;;");
    assert_eq!(
        (e.line, e.column, e.token.as_deref()),
        (1, 22, Some(";")),
        "{e}"
    );
}

#[test]
fn values_and_empty_queries_are_refused() {
    reject_at("values (1), (2)", "values", "VALUES is not supported");
    let e = reject("  -- nothing\n");
    assert!(e.message.contains("the query is empty"), "{e}");
    assert_eq!(e.token, None);
}

#[test]
fn syntax_errors_say_where() {
    let e = reject_at(
        "select * frm events",
        "events",
        "syntax error: expected the end of the query, found events",
    );
    assert_eq!((e.line, e.column), (1, 14));
    let e = reject("select *\nfrom events where");
    assert!(e.message.contains("found the end of the query"), "{e}");
    assert_eq!((e.line, e.column), (2, 18));
    let e = reject("select 'unterminated from events");
    assert!(
        e.message
            .starts_with("syntax error: Unterminated string literal"),
        "{e}"
    );
    assert_eq!((e.line, e.column), (1, 8));
    reject_at("select * from events where type = ?", "?", "syntax error");
}

// ---------------------------------------------------------------------------------------------
// Refused: functions, casts, parameters.

#[test]
fn functions_outside_the_list_are_refused() {
    let e = reject_at(
        "select pg_sleep(10) from events",
        "pg_sleep",
        "function pg_sleep is not allowed; allowed: count, sum, avg, min, max, percentile_cont",
    );
    assert!(
        e.message.ends_with("jsonb_array_length, jsonb_typeof"),
        "{e}"
    );
    reject_at(
        "select set_config('role', 'postgres', false) from events",
        "set_config",
        "function set_config is not allowed",
    );
    reject_at(
        "select * from events where type = current_setting('app.tenant')",
        "current_setting",
        "function current_setting is not allowed",
    );
    reject_at(
        "select pg_read_file('/etc/passwd') from events",
        "pg_read_file",
        "not allowed",
    );
    reject_at(
        "select dblink('host=evil', 'select 1') from events",
        "dblink",
        "not allowed",
    );
    reject_at("select version() from events", "version", "not allowed");
    reject_at(
        "select current_user from events",
        "current_user",
        "not allowed",
    );
    reject_at(
        "select substring(type from 1 for 3) from events",
        "substring",
        "function substring is not allowed",
    );
    reject_at(
        "select pg_catalog.now() from events",
        "pg_catalog",
        "function names are not qualified",
    );
    reject_at(
        "select \"COUNT\"(*) from events",
        "\"COUNT\"",
        "function COUNT is not allowed",
    );
}

#[test]
fn function_shapes_are_checked() {
    reject_at(
        "select percentile_cont(0.5) from pipeline_health",
        "percentile_cont",
        "needs WITHIN GROUP",
    );
    reject_at(
        "select percentile_cont(95) within group (order by lag_seconds) from pipeline_health",
        "95",
        "takes one fraction between 0 and 1",
    );
    reject_at(
        "select time_bucket('5 minutes') from events",
        "time_bucket",
        "time_bucket takes 2 argument(s), not 1",
    );
    reject_at(
        "select date_trunc(type, timestamp_utc) from events",
        "type",
        "date_trunc's first argument is a unit as a string literal",
    );
    reject_at(
        "select lower(type) filter (where true) from events",
        "lower",
        "FILTER applies to aggregates only",
    );
    reject_at(
        "select sum(*) from events",
        "sum",
        "sum does not take * as an argument",
    );
    reject_at(
        "select count(*) from events where sum(x) > 1",
        "x",
        "unknown column \"x\"",
    );
}

#[test]
fn window_functions_are_refused() {
    reject_at(
        "select count(*) over (partition by type) from events",
        "over",
        "window functions (OVER) are not supported",
    );
    reject_at(
        "select sum(source_offset) over w from events window w as (order by id)",
        "window w",
        "WINDOW clauses and window functions are not supported",
    );
}

#[test]
fn casts_to_other_types_are_refused_at_the_type() {
    reject_at(
        "select 'pg_class'::regclass from events",
        "regclass",
        "cast to regclass is not allowed; allowed types: text, varchar,",
    );
    reject_at(
        "select cast(id as regclass) from events",
        "regclass",
        "cast to regclass is not allowed",
    );
    reject_at(
        "select id::oid from events",
        "oid",
        "cast to oid is not allowed",
    );
    reject_at(
        "select type::\"char\" from events",
        "\"char\"",
        "cast to \"char\" is not allowed",
    );
    reject_at(
        "select type::bytea from events",
        "bytea",
        "cast to bytea is not allowed",
    );
    reject_at(
        "select type::text[] from events",
        "text",
        "cast to text[] is not allowed",
    );
    reject_at(
        "select type::pg_catalog.text from events",
        "pg_catalog",
        "cast to pg_catalog.text is not allowed",
    );
}

#[test]
fn parameters_are_refused() {
    reject_at(
        "select * from events where tenant_id = $1",
        "$1",
        "parameters such as $1 are not allowed",
    );
    reject_at(
        "select * from events where type = :kind",
        ":kind",
        "parameters such as :kind are not allowed",
    );
    reject_at(
        "select * from events limit $2",
        "$2",
        "parameters such as $2 are not allowed",
    );
    reject_at(
        "select $1::text from events",
        "$1",
        "parameters such as $1 are not allowed",
    );
}

#[test]
fn other_literals_are_refused() {
    reject_at(
        "select E'\\x41' from events",
        "E'\\x41'",
        "this literal is not supported",
    );
    reject_at(
        "select $$x$$ from events",
        "$$x$$",
        "this literal is not supported",
    );
    reject_at(
        "select X'ff' from events",
        "X'ff'",
        "this literal is not supported",
    );
}

// ---------------------------------------------------------------------------------------------
// Refused: clauses outside the subset.

#[test]
fn locking_and_into_are_refused() {
    reject_at(
        "select * from events for update",
        "for",
        "FOR UPDATE/SHARE and other FOR clauses are not supported",
    );
    reject_at(
        "select * from events limit 1 for share nowait",
        "for",
        "FOR UPDATE/SHARE",
    );
    reject_at(
        "select * into stolen from events",
        "into",
        "SELECT INTO is not supported",
    );
}

#[test]
fn limit_and_offset_take_non_negative_integer_literals() {
    reject_at(
        "select * from events limit -1",
        "-",
        "LIMIT takes a non-negative integer literal",
    );
    reject_at(
        "select * from events limit 'x'",
        "'x'",
        "LIMIT takes a non-negative integer literal",
    );
    reject_at("select * from events limit 1.5", "1.5", "LIMIT takes");
    reject_at(
        "select * from events limit 10 offset -5",
        "-",
        "OFFSET takes a non-negative integer literal",
    );
    reject_at(
        "select * from events limit (select 1)",
        "(",
        "LIMIT takes a non-negative integer literal",
    );
    reject_at(
        "select * from events fetch first 5 rows only",
        "fetch",
        "FETCH is not supported: use LIMIT",
    );
    reject_at("select top 5 * from events", "top", "TOP is not supported");
}

#[test]
fn ordering_and_grouping_forms_are_checked() {
    reject_at(
        "select type from events order by 2",
        "2",
        "position 2 is not in the select list, which has 1 columns",
    );
    reject_at(
        "select type, count(*) from events group by 0",
        "0",
        "position 0 is not in the select list",
    );
    reject_at(
        "select type from events order by type using <",
        "using",
        "ORDER BY … USING is not supported",
    );
    reject_at(
        "select distinct on (stream_key) * from events",
        "distinct",
        "DISTINCT ON is not supported",
    );
    reject_at(
        "select type from events group by rollup (type)",
        "type)",
        "GROUPING SETS, CUBE and ROLLUP are not supported",
    );
    reject_at(
        "select type, count(*) from events group by type having nope > 1",
        "nope",
        "unknown column \"nope\"",
    );
}

#[test]
fn expressions_outside_the_subset_are_refused() {
    reject_at(
        "select * from events where type similar to 'a%'",
        "type",
        "SIMILAR TO",
    );
    reject_at(
        "select * from events where type ~ 'a.*'",
        "~",
        "operator ~ is not supported",
    );
    reject_at(
        "select * from events where payload @> '{}'",
        "@>",
        "operator @> is not supported",
    );
    reject_at(
        "select * from events where type like 'a!%' escape '!'",
        "type",
        "ESCAPE is not supported",
    );
    reject_at(
        "select timestamp_utc at time zone 'UTC' from events",
        "timestamp_utc",
        "AT TIME ZONE is not supported",
    );
    reject_at(
        "select * from events where type is distinct from 'a'",
        "type",
        "IS [NOT] DISTINCT FROM is not supported",
    );
    reject_at("select array[1, 2] from events", "1", "arrays");
    reject_at(
        "select payload['a'] from events",
        "payload",
        "subscripts are not supported",
    );
    reject_at(
        "select extract(foo from timestamp_utc) from events",
        "extract",
        "EXTRACT takes a field",
    );
    reject_at(
        "select interval '1' day from events",
        "'1'",
        "interval qualifiers",
    );
}

#[test]
fn limits_protect_the_stack() {
    // A long operator chain is a deep tree without parser recursion: refused before any walk.
    let chain = vec!["1"; (MAX_SQL_BYTES - 30) / 2].join("+");
    let e = reject(&format!("select {chain} from events"));
    assert!(
        e.message
            .contains(&format!("more than {MAX_EXPR_DEPTH} deep")),
        "{e}"
    );

    let long = format!(
        "select * from events where type = '{}'",
        "x".repeat(MAX_SQL_BYTES)
    );
    let e = reject(&long);
    assert!(e.message.contains("bytes long"), "{e}");

    let nested = format!("select {}1{} from events", "(".repeat(200), ")".repeat(200));
    let e = reject(&nested);
    assert!(e.message.contains("nested too deeply"), "{e}");

    // Just under the depth limit is fine.
    let chain = vec!["source_offset"; MAX_EXPR_DEPTH / 2].join(" + ");
    accept(&format!("select {chain} from events"));
}

#[test]
fn locations_count_lines_and_characters() {
    let sql = "select 'é', type\nfrom events\nwhere  nope = 1";
    let e = reject_at(sql, "nope", "unknown column \"nope\"");
    assert_eq!((e.line, e.column), (3, 8));
    let e = reject_at("select 'ü', x.type from events", "x", "unknown table \"x\"");
    assert_eq!((e.line, e.column), (1, 13));
}

#[test]
fn a_parenthesised_query_is_refused() {
    reject_at(
        "(select * from events)",
        "(",
        "a parenthesised query is not supported",
    );
}

#[test]
fn the_rendering_must_read_back_as_the_checked_tree() {
    let checked = super::definition(&VIEWS[0]).expect("the definition parses");
    assert!(super::reads_back_as(VIEWS[0].definition, &checked).is_ok());
    let e = super::reads_back_as("SELECT 1 --1 FROM events", &checked).unwrap_err();
    assert!(e.message.starts_with("internal error"), "{e}");
    assert!(super::reads_back_as("SELECT 1; SELECT 2", &checked).is_err());
}

#[test]
fn errors_display_their_message() {
    let e = reject("select pg_sleep(1) from events");
    assert_eq!(e.to_string(), e.message);
}
