//! What the shell reads, line by line, whatever the source (a terminal, stdin, `-f FILE`): SQL
//! statements, complete once a line ends with `;` outside quotes and comments, and helper
//! commands (`.tables`, `\d TABLE`, …) on lines of their own.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// One thing to run, with the line it starts on (1-based) for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// One or more statements, the last one ended with `;` (or by the end of the input).
    Sql {
        text: String,
        line: usize,
    },
    Command {
        command: Command,
        line: usize,
    },
}

/// The shell's helper commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `.tables`, `\d`, `\dt`: every table the session can read.
    Tables,
    /// `\d TABLE`, `.schema TABLE`: the columns of a table (`DESCRIBE TABLE`).
    Describe(String),
    /// `.help`, `\?`.
    Help,
    /// `.quit`, `.exit`, `\q`.
    Quit,
}

/// The helper commands, for `.help` and for an unknown command's message.
pub const COMMANDS: &str = "\
.tables (or \\d)          list the tables (same as SHOW TABLES, without the system ones)
\\d TABLE (or .schema)    the columns of TABLE (same as DESCRIBE TABLE)
.help (or \\?)            this help
.quit (or \\q, Ctrl-D)    leave the shell
Statements end with ';' and may span lines; several may share a line.";

impl Command {
    /// The query that answers the command (`None`: the command is not a query).
    pub fn sql(&self) -> Option<String> {
        match self {
            Command::Tables => Some(
                "SELECT table_schema || '.' || table_name AS table_name, table_type \
                 FROM information_schema.tables \
                 WHERE table_schema NOT IN ('information_schema', 'params') \
                 ORDER BY table_schema, table_name"
                    .to_string(),
            ),
            Command::Describe(table) => Some(format!("DESCRIBE {table}")),
            Command::Help | Command::Quit => None,
        }
    }

    fn parse(line: &str) -> Result<Self, String> {
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or_default();
        let argument = words.next();
        let extra = words.next();
        let command = match (name, argument) {
            (".tables" | "\\d" | "\\dt", None) => Command::Tables,
            ("\\d" | ".schema" | ".describe", Some(table)) => {
                Command::Describe(table.trim_end_matches(';').to_string())
            }
            (".help" | "\\?" | "\\h", None) => Command::Help,
            (".quit" | ".exit" | "\\q", None) => Command::Quit,
            _ => {
                return Err(format!(
                    "unknown command '{line}'; the commands are:\n{COMMANDS}"
                ))
            }
        };
        if extra.is_some() {
            return Err(format!("'{line}': one table at a time"));
        }
        Ok(command)
    }
}

/// Collects lines until they make complete statements.
#[derive(Debug, Default)]
pub struct InputBuffer {
    pending: String,
    /// The line the pending text starts on.
    pending_line: usize,
    /// Lines read so far.
    lines: usize,
}

impl InputBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a statement is being continued (for the REPL's prompt): text that is only
    /// spaces and finished comments holds none, so a helper command may follow it.
    pub fn is_empty(&self) -> bool {
        match Tokenizer::new(&GenericDialect {}, &self.pending).tokenize() {
            Ok(tokens) => tokens
                .iter()
                .all(|token| matches!(token, Token::Whitespace(_))),
            // An open quote or comment: a statement is being continued.
            Err(_) => false,
        }
    }

    /// Forgets a statement being typed (Ctrl-C in the REPL).
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    /// Adds one line; returns what is complete, or an unknown command's message.
    pub fn push_line(&mut self, line: &str) -> Result<Option<Input>, String> {
        self.lines += 1;
        let trimmed = line.trim();
        if self.is_empty() {
            if trimmed.starts_with('.') || trimmed.starts_with('\\') {
                return Command::parse(trimmed).map(|command| {
                    Some(Input::Command {
                        command,
                        line: self.lines,
                    })
                });
            }
            if trimmed.is_empty() {
                return Ok(None);
            }
            self.pending.clear();
            self.pending_line = self.lines;
        }
        self.pending.push_str(line);
        self.pending.push('\n');
        if ends_with_semicolon(&self.pending) {
            return Ok(self.take());
        }
        Ok(None)
    }

    /// The end of the input: what is left runs even without its final `;`.
    pub fn finish(&mut self) -> Option<Input> {
        self.take()
    }

    fn take(&mut self) -> Option<Input> {
        if self.is_empty() {
            return None;
        }
        Some(Input::Sql {
            text: std::mem::take(&mut self.pending),
            line: self.pending_line,
        })
    }
}

/// Whether the last token of `sql` (comments and spaces aside) is `;`. Text that does not
/// tokenize (an open quote or comment) is not complete yet.
fn ends_with_semicolon(sql: &str) -> bool {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return false;
    };
    tokens
        .iter()
        .rev()
        .find(|token| !matches!(token, Token::Whitespace(_)))
        .is_some_and(|token| *token == Token::SemiColon)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> Vec<Input> {
        let mut buffer = InputBuffer::new();
        let mut inputs: Vec<Input> = lines
            .iter()
            .filter_map(|line| buffer.push_line(line).unwrap())
            .collect();
        inputs.extend(buffer.finish());
        inputs
    }

    fn sql(text: &str, line: usize) -> Input {
        Input::Sql {
            text: text.to_string(),
            line,
        }
    }

    #[test]
    fn comments_before_a_helper_command_do_not_hold_it_back() {
        let mut buffer = InputBuffer::new();
        assert_eq!(buffer.push_line("-- the lake at a glance"), Ok(None));
        assert_eq!(
            buffer.push_line(".tables"),
            Ok(Some(Input::Command {
                command: Command::Tables,
                line: 2
            }))
        );
        assert_eq!(buffer.push_line("/* open"), Ok(None));
        assert!(!buffer.is_empty(), "an open comment continues");
        assert_eq!(buffer.finish(), Some(sql("/* open\n", 3)));
    }

    #[test]
    fn statements_end_at_a_semicolon_outside_quotes_and_comments() {
        assert_eq!(
            feed(&[
                "SELECT 1;",
                "",
                "SELECT",
                "  2;",
                "SELECT ';",
                "' AS x; -- done;"
            ]),
            vec![
                sql("SELECT 1;\n", 1),
                sql("SELECT\n  2;\n", 3),
                sql("SELECT ';\n' AS x; -- done;\n", 5),
            ]
        );
        assert_eq!(
            feed(&["SELECT 1; SELECT 2;", "/* a;", "b; */ SELECT 3"]),
            vec![
                sql("SELECT 1; SELECT 2;\n", 1),
                sql("/* a;\nb; */ SELECT 3\n", 2)
            ]
        );
    }

    #[test]
    fn commands_are_lines_of_their_own() {
        let command = |command, line| Input::Command { command, line };
        assert_eq!(
            feed(&[
                ".tables",
                "\\d gold.unified_payments",
                "SELECT",
                ".tables;",
                "\\q"
            ]),
            vec![
                command(Command::Tables, 1),
                command(Command::Describe("gold.unified_payments".into()), 2),
                sql("SELECT\n.tables;\n", 3),
                command(Command::Quit, 5),
            ]
        );
        let mut buffer = InputBuffer::new();
        let unknown = buffer.push_line(".tabels").unwrap_err();
        assert!(unknown.contains(".tables"), "{unknown}");
    }
}
