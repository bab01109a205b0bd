//! The query's tokens with their locations: where each error points, and what it quotes.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::ParserError;
use sqlparser::tokenizer::{Location, Span, Token, TokenWithSpan, Tokenizer};

use super::PlanError;

/// The tokens of one query text, whitespace and comments left out.
pub(super) struct Source {
    text: String,
    /// Byte offset of each line's start.
    lines: Vec<usize>,
    tokens: Vec<TokenWithSpan>,
    /// Just past the last token: where "unexpected end of query" points.
    end: Location,
}

impl Source {
    /// Tokenizes `sql`; returns the source and every token (whitespace included) for the parser.
    pub(super) fn tokenize(sql: &str) -> Result<(Self, Vec<TokenWithSpan>), PlanError> {
        let all = Tokenizer::new(&PostgreSqlDialect {}, sql)
            .tokenize_with_location()
            .map_err(|e| {
                PlanError::new(format!("syntax error: {}", e.message), e.location, None)
            })?;
        let tokens: Vec<TokenWithSpan> = all
            .iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
            .cloned()
            .collect();
        let end = tokens.last().map_or(Location::new(1, 1), |t| {
            Location::new(t.span.end.line, t.span.end.column)
        });
        let lines = std::iter::once(0)
            .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let source = Self {
            text: sql.to_string(),
            lines,
            tokens,
            end,
        };
        Ok((source, all))
    }

    /// An error at `at`, quoting the token that starts there.
    pub(super) fn error(&self, at: Location, message: impl Into<String>) -> PlanError {
        let at = if at.line == 0 { self.end } else { at };
        let token = self
            .tokens
            .iter()
            .find(|t| t.span.start == at)
            .and_then(|t| self.slice(t.span));
        PlanError::new(message.into(), at, token)
    }

    /// An error quoting all of `span` (a literal, say, which may be more than one token).
    pub(super) fn error_quoting(
        &self,
        span: Span,
        fallback: Location,
        message: impl Into<String>,
    ) -> PlanError {
        match self.slice(span) {
            Some(text) => PlanError::new(message.into(), span.start, Some(text)),
            None => self.error(start_or(span, fallback), message),
        }
    }

    /// The query's text in `span`, as written.
    fn slice(&self, span: Span) -> Option<String> {
        let start = self.offset(span.start)?;
        let end = self.offset(span.end)?;
        self.text.get(start..end).map(str::to_string)
    }

    /// The byte offset of a location (its column counts characters).
    fn offset(&self, at: Location) -> Option<usize> {
        let line_start = *self
            .lines
            .get(usize::try_from(at.line).ok()?.checked_sub(1)?)?;
        let column = usize::try_from(at.column).ok()?.checked_sub(1)?;
        let line = &self.text[line_start..];
        match line.char_indices().nth(column) {
            Some((offset, _)) => Some(line_start + offset),
            None if line.chars().count() == column => Some(self.text.len()),
            None => None,
        }
    }

    /// An error at the start of `span`, or at `fallback` when the parser recorded no span.
    pub(super) fn error_in(
        &self,
        span: Span,
        fallback: Location,
        message: impl Into<String>,
    ) -> PlanError {
        self.error(start_or(span, fallback), message)
    }

    /// The parser's error, with the location it names (or the end of the query).
    pub(super) fn parser_error(&self, error: ParserError) -> PlanError {
        let text = match error {
            ParserError::RecursionLimitExceeded => {
                return PlanError::new(
                    "the query is nested too deeply".into(),
                    Location::new(1, 1),
                    None,
                )
            }
            ParserError::TokenizerError(text) | ParserError::ParserError(text) => text,
        };
        let (text, at) = match text.rsplit_once(" at Line: ") {
            Some((text, location)) => (text.to_string(), parse_location(location)),
            None => (text, None),
        };
        let text = match text
            .strip_prefix("Expected: ")
            .and_then(|rest| rest.rsplit_once(", found: "))
        {
            Some((expected, "EOF")) => format!("expected {expected}, found the end of the query"),
            Some((expected, found)) => format!("expected {expected}, found {found}"),
            None => text,
        };
        self.error(at.unwrap_or(self.end), format!("syntax error: {text}"))
    }

    /// Just past the last token.
    pub(super) fn end(&self) -> Location {
        self.end
    }

    /// Where the first token starts, or line 1, column 1.
    pub(super) fn start(&self) -> Location {
        self.tokens
            .first()
            .map_or(Location::new(1, 1), |t| t.span.start)
    }

    /// Where the last token before `at` starts, else `at`.
    pub(super) fn previous(&self, at: Location) -> Location {
        self.tokens
            .iter()
            .rev()
            .find(|t| t.span.start < at)
            .map_or(at, |t| t.span.start)
    }

    /// Where the first token after the one starting at `at` starts, else `at`.
    pub(super) fn next_after(&self, at: Location) -> Location {
        self.tokens
            .iter()
            .find(|t| t.span.start > at)
            .map_or(at, |t| t.span.start)
    }

    /// Where the first token whose text is `text` (any case) starts, between `from` and `until`.
    pub(super) fn text_between(
        &self,
        from: Location,
        until: Location,
        text: &str,
    ) -> Option<Location> {
        self.tokens
            .iter()
            .find(|t| {
                t.span.start >= from
                    && t.span.start < until
                    && t.token.to_string().eq_ignore_ascii_case(text)
            })
            .map(|t| t.span.start)
    }

    /// Where the first `keyword` at or after `from` starts, else `from`.
    pub(super) fn keyword_after(&self, from: Location, keyword: Keyword) -> Location {
        self.tokens
            .iter()
            .find(|t| t.span.start >= from && is_keyword(&t.token, keyword))
            .map_or(from, |t| t.span.start)
    }

    /// Where the first `first` followed by `second` (e.g. `GROUP BY`) at or after `from` starts,
    /// else `from`.
    pub(super) fn keywords_after(
        &self,
        from: Location,
        first: Keyword,
        second: Keyword,
    ) -> Location {
        self.tokens
            .windows(2)
            .find(|pair| {
                pair[0].span.start >= from
                    && is_keyword(&pair[0].token, first)
                    && is_keyword(&pair[1].token, second)
            })
            .map_or(from, |pair| pair[0].span.start)
    }

    /// Where the last `keyword` before `before` starts, else `before`.
    pub(super) fn keyword_before(&self, before: Location, keyword: Keyword) -> Location {
        self.tokens
            .iter()
            .rev()
            .find(|t| t.span.start < before && is_keyword(&t.token, keyword))
            .map_or(before, |t| t.span.start)
    }

    /// Where the first unquoted word `word` (any case) at or after `from` starts, else `from`.
    pub(super) fn word_after(&self, from: Location, word: &str) -> Location {
        self.tokens
            .iter()
            .find(|t| {
                t.span.start >= from
                    && matches!(&t.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
            })
            .map_or(from, |t| t.span.start)
    }

    /// Where the last unquoted word `word` (any case) before `before` starts, else `before`.
    pub(super) fn word_before(&self, before: Location, word: &str) -> Location {
        self.tokens
            .iter()
            .rev()
            .find(|t| {
                t.span.start < before
                    && matches!(&t.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
            })
            .map_or(before, |t| t.span.start)
    }
}

/// The start of `span`, or `fallback` when the span is empty (the parser did not record one).
pub(super) fn start_or(span: Span, fallback: Location) -> Location {
    if span.start.line == 0 {
        fallback
    } else {
        span.start
    }
}

fn is_keyword(token: &Token, keyword: Keyword) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.keyword == keyword)
}

/// `"3, Column: 14"` → line 3, column 14.
fn parse_location(text: &str) -> Option<Location> {
    let (line, column) = text.split_once(", Column: ")?;
    Some(Location::new(
        line.trim().parse().ok()?,
        column.trim().parse().ok()?,
    ))
}
