//! `paylake sql`: reads statements (a query argument, `-f FILE`, piped stdin, or an interactive
//! line editor) and renders their results; planning, checks and execution are
//! `paylake_jobs::shell`.
//!
//! Everything is written through one fallible writer: a reader that goes away (`| head -1`)
//! ends the shell quietly with exit 0 instead of a panic.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::ValueEnum;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::parquet::arrow::ArrowWriter;
use paylake_jobs::export::OutputFile;
use paylake_jobs::shell::input::{Command, Input, InputBuffer, COMMANDS};
use paylake_jobs::shell::{Shell, ShellOptions, StatementResult};
use paylake_jobs::EngineSettings;
use paylake_lake::Lake;

use crate::{job_failure, usage, Failure};

/// How results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned text table (cut at --max-rows).
    Table,
    /// CSV with a header line per result.
    Csv,
    /// One JSON array of row objects per result.
    Json,
    /// One JSON object per row (newline-delimited JSON).
    Ndjson,
    /// One Parquet file (needs --output; every statement must give the same columns).
    Parquet,
}

impl OutputFormat {
    /// The format an output file's extension asks for.
    fn from_extension(path: &Path) -> Option<Self> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match extension.as_str() {
            "csv" => Self::Csv,
            "json" => Self::Json,
            "ndjson" | "jsonl" => Self::Ndjson,
            "parquet" => Self::Parquet,
            "txt" => Self::Table,
            _ => return None,
        })
    }
}

/// The flags of `paylake sql`, as parsed.
pub struct SqlArgs {
    pub query: Option<String>,
    pub file: Option<PathBuf>,
    pub format: Option<OutputFormat>,
    pub output: Option<PathBuf>,
    pub max_rows: Option<usize>,
    pub history_file: Option<PathBuf>,
    pub options: ShellOptions,
    pub engine: EngineSettings,
}

/// Why the shell stopped early.
enum Stop {
    /// Whoever read the output went away: not an error.
    Closed,
    Failed(Failure),
}

impl From<Failure> for Stop {
    fn from(failure: Failure) -> Self {
        Stop::Failed(failure)
    }
}

/// A write error: a closed pipe ends the shell, anything else fails it.
fn write_error(error: std::io::Error) -> Stop {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        Stop::Closed
    } else {
        Stop::Failed(Failure::from(
            anyhow::Error::from(error).context("cannot write the results"),
        ))
    }
}

pub async fn sql(lake: &Lake, args: SqlArgs, json: bool) -> Result<(), Failure> {
    let format = match (args.format, &args.output) {
        (Some(format), _) => format,
        (None, _) if json => OutputFormat::Json,
        (None, Some(path)) => OutputFormat::from_extension(path).unwrap_or(OutputFormat::Table),
        (None, None) => OutputFormat::Table,
    };
    if format == OutputFormat::Parquet && args.output.is_none() {
        return Err(usage(anyhow::anyhow!(
            "--format parquet writes a file: add --output FILE.parquet"
        )));
    }
    if args.query.is_some() && args.file.is_some() {
        return Err(usage(anyhow::anyhow!(
            "give either a query or --file, not both"
        )));
    }
    let source = match (&args.query, &args.file) {
        (Some(query), _) => Source::Text {
            text: query.clone(),
            origin: None,
        },
        (None, Some(path)) => Source::Text {
            text: std::fs::read_to_string(path)
                .map_err(|e| usage(anyhow::anyhow!("cannot read {}: {e}", path.display())))?,
            origin: Some(path.display().to_string()),
        },
        (None, None) if std::io::stdin().is_terminal() => Source::Terminal,
        (None, None) => Source::Stdin,
    };
    let output = match &args.output {
        Some(path) => Some(OutputFile::create(lake, path).map_err(job_failure)?),
        None => None,
    };
    let shell = Shell::open(lake, &args.engine, args.options.clone())
        .await
        .map_err(job_failure)?;
    let mut renderer = Renderer::new(format, args.max_rows, output)?;
    let outcome = match source {
        Source::Text { text, origin } => {
            let mut buffer = InputBuffer::new();
            let mut outcome = Ok(());
            for line in text.lines() {
                outcome = push(&shell, &mut renderer, &mut buffer, line, origin.as_deref()).await;
                if outcome.is_err() {
                    break;
                }
            }
            match outcome {
                Ok(()) => finish(&shell, &mut renderer, &mut buffer, origin.as_deref()).await,
                stopped => stopped,
            }
        }
        Source::Stdin => run_stdin(&shell, &mut renderer).await,
        Source::Terminal => repl(&shell, &mut renderer, lake, args.history_file).await,
    };
    match outcome.and_then(|()| renderer.close()) {
        Ok(()) | Err(Stop::Closed) => Ok(()),
        Err(Stop::Failed(failure)) => Err(failure),
    }
}

enum Source {
    /// A query argument or a file's text (`origin`: the file, for messages).
    Text {
        text: String,
        origin: Option<String>,
    },
    Stdin,
    Terminal,
}

/// One line of a script: runs what it completes; a failure stops the script.
async fn push(
    shell: &Shell,
    renderer: &mut Renderer,
    buffer: &mut InputBuffer,
    line: &str,
    origin: Option<&str>,
) -> Result<(), Stop> {
    match buffer.push_line(line) {
        Ok(Some(input)) => run_input(shell, renderer, input, origin).await,
        Ok(None) => Ok(()),
        Err(message) => Err(Stop::Failed(located(
            usage(anyhow::anyhow!(message)),
            origin,
            None,
        ))),
    }
}

async fn finish(
    shell: &Shell,
    renderer: &mut Renderer,
    buffer: &mut InputBuffer,
    origin: Option<&str>,
) -> Result<(), Stop> {
    match buffer.finish() {
        Some(input) => run_input(shell, renderer, input, origin).await,
        None => Ok(()),
    }
}

/// Piped stdin: lines run as soon as they complete a statement.
async fn run_stdin(shell: &Shell, renderer: &mut Renderer) -> Result<(), Stop> {
    let mut buffer = InputBuffer::new();
    // One line per read, the lock held only while reading: the run is a task that may move
    // between threads, so nothing that is not Send may live across an await.
    let stdin = std::io::stdin();
    loop {
        let mut line = String::new();
        match tokio::task::block_in_place(|| stdin.read_line(&mut line)) {
            Ok(0) => return finish(shell, renderer, &mut buffer, Some("stdin")).await,
            Ok(_) => {
                let line = line.strip_suffix('\n').unwrap_or(&line);
                let line = line.strip_suffix('\r').unwrap_or(line);
                push(shell, renderer, &mut buffer, line, Some("stdin")).await?
            }
            Err(e) => {
                return Err(Stop::Failed(usage(anyhow::anyhow!(
                    "cannot read stdin: {e}"
                ))))
            }
        }
    }
}

/// The interactive shell: history, multi-line statements, errors shown and the session kept.
async fn repl(
    shell: &Shell,
    renderer: &mut Renderer,
    lake: &Lake,
    history_file: Option<PathBuf>,
) -> Result<(), Stop> {
    use rustyline::error::ReadlineError;
    let mut editor = rustyline::DefaultEditor::new().map_err(|e| {
        Stop::Failed(Failure::from(anyhow::anyhow!(
            "cannot start the line editor: {e}"
        )))
    })?;
    let history = history_file.or_else(|| {
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".paylake_history"))
    });
    if let Some(path) = &history {
        // A missing history file is the first session.
        let _ = editor.load_history(path);
    }
    renderer.note(&format!(
        "paylake sql on {} ({}). End statements with ';'. .help for commands, Ctrl-D to leave.",
        lake.display(),
        if shell.options().allow_writes {
            "session writes allowed"
        } else {
            "read-only"
        }
    ))?;
    let mut buffer = InputBuffer::new();
    loop {
        let prompt = if buffer.is_empty() {
            "paylake> "
        } else {
            "     ..> "
        };
        let line = tokio::task::block_in_place(|| editor.readline(prompt));
        let line = match line {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                return Err(Stop::Failed(Failure::from(anyhow::anyhow!(
                    "cannot read the terminal: {e}"
                ))))
            }
        };
        let input = match buffer.push_line(&line) {
            Ok(Some(input)) => input,
            Ok(None) => continue,
            Err(message) => {
                eprintln!("error: {message}");
                continue;
            }
        };
        let entry = match &input {
            Input::Sql { text, .. } => text.trim().to_string(),
            Input::Command { .. } => line.trim().to_string(),
        };
        let _ = editor.add_history_entry(entry);
        if matches!(
            input,
            Input::Command {
                command: Command::Quit,
                ..
            }
        ) {
            break;
        }
        match run_input(shell, renderer, input, None).await {
            Ok(()) => {}
            Err(Stop::Closed) => return Err(Stop::Closed),
            Err(Stop::Failed(Failure { error, .. })) => eprintln!("error: {error:#}"),
        }
    }
    if let Some(path) = &history {
        if let Err(e) = editor.save_history(path) {
            tracing::warn!("cannot save the shell history to {}: {e}", path.display());
        }
    }
    Ok(())
}

/// Runs statements or a command and renders each result as soon as it is complete.
async fn run_input(
    shell: &Shell,
    renderer: &mut Renderer,
    input: Input,
    origin: Option<&str>,
) -> Result<(), Stop> {
    let (sql, line) = match input {
        Input::Sql { text, line } => (text, line),
        Input::Command { command, line } => match command.sql() {
            Some(sql) => (sql, line),
            None if command == Command::Help => return renderer.note(COMMANDS),
            // `.quit` in a script or query: the rest is not run.
            None => return Err(Stop::Closed),
        },
    };
    let statements = shell
        .statements(&sql)
        .map_err(|e| located(job_failure(e), origin, Some(line)))?;
    for statement in statements {
        let result = shell
            .run(statement)
            .await
            .map_err(|e| located(job_failure(e), origin, Some(line)))?;
        renderer.render(&result)?;
    }
    Ok(())
}

/// Prefixes a failure with where its statement starts (`file.sql:12`).
fn located(mut failure: Failure, origin: Option<&str>, line: Option<usize>) -> Failure {
    if let Some(origin) = origin {
        let place = match line {
            Some(line) => format!("{origin}:{line}"),
            None => origin.to_string(),
        };
        failure.error = failure.error.context(place);
    }
    failure
}

/// Writes results in one format to stdout or an output file.
struct Renderer {
    format: OutputFormat,
    max_rows: Option<usize>,
    out: Box<dyn Write + Send>,
    /// The output file, renamed over its target once every statement ran.
    file: Option<OutputFile>,
    /// The Parquet writer, with the columns every result must have.
    parquet: Option<(SchemaRef, ArrowWriter<std::fs::File>)>,
}

impl Renderer {
    fn new(
        format: OutputFormat,
        max_rows: Option<usize>,
        mut file: Option<OutputFile>,
    ) -> Result<Self, Failure> {
        let out: Box<dyn Write + Send> = match &mut file {
            Some(file) => Box::new(std::io::BufWriter::new(file.file().try_clone()?)),
            None => Box::new(std::io::stdout()),
        };
        Ok(Self {
            format,
            max_rows,
            out,
            file,
            parquet: None,
        })
    }

    /// A message for the person at the terminal (help, the banner): never into an output file.
    fn note(&mut self, text: &str) -> Result<(), Stop> {
        if self.file.is_some() {
            eprintln!("{text}");
            return Ok(());
        }
        writeln!(self.out, "{text}").map_err(write_error)?;
        self.out.flush().map_err(write_error)
    }

    fn render(&mut self, result: &StatementResult) -> Result<(), Stop> {
        // Statements that return nothing (CREATE VIEW … under --allow-writes) print nothing.
        if result.schema.fields().is_empty() {
            return Ok(());
        }
        let text = match self.format {
            OutputFormat::Table => self.table(result)?,
            OutputFormat::Csv => csv(result)?,
            OutputFormat::Json => json(result, JsonLayout::Array)?,
            OutputFormat::Ndjson => json(result, JsonLayout::Lines)?,
            OutputFormat::Parquet => return self.parquet(result),
        };
        self.out.write_all(&text).map_err(write_error)?;
        self.out.flush().map_err(write_error)
    }

    fn table(&self, result: &StatementResult) -> Result<Vec<u8>, Failure> {
        let options = FormatOptions::default().with_null("NULL");
        let mut table = comfy_table::Table::new();
        table
            .load_preset(comfy_table::presets::ASCII_FULL_CONDENSED)
            .set_header(result.schema.fields().iter().map(|f| f.name().as_str()));
        let rows = result.num_rows();
        let shown = self.max_rows.unwrap_or(rows).min(rows);
        let mut left = shown;
        for batch in &result.batches {
            if left == 0 {
                break;
            }
            let formatters = batch
                .columns()
                .iter()
                .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()?;
            for row in 0..batch.num_rows().min(left) {
                table.add_row(formatters.iter().map(|f| f.value(row).to_string()));
            }
            left -= batch.num_rows().min(left);
        }
        for (index, field) in result.schema.fields().iter().enumerate() {
            if field.data_type().is_numeric() {
                if let Some(column) = table.column_mut(index) {
                    column.set_cell_alignment(comfy_table::CellAlignment::Right);
                }
            }
        }
        let mut text = format!("{table}\n");
        if shown < rows {
            text.push_str(&format!(
                "({} more rows; --max-rows {} shows them)\n",
                rows - shown,
                rows
            ));
        }
        Ok(text.into_bytes())
    }

    fn parquet(&mut self, result: &StatementResult) -> Result<(), Stop> {
        let writer = match &mut self.parquet {
            Some((schema, writer)) => {
                if schema != &result.schema {
                    return Err(Stop::Failed(usage(anyhow::anyhow!(
                        "--format parquet writes one table: every statement must return the \
                         same columns"
                    ))));
                }
                writer
            }
            None => {
                let file = match &mut self.file {
                    Some(file) => file.file().try_clone().map_err(write_error)?,
                    None => return Err(Stop::Failed(usage(anyhow::anyhow!("no --output")))),
                };
                let writer = ArrowWriter::try_new(file, Arc::clone(&result.schema), None)
                    .map_err(|e| Stop::Failed(Failure::from(e)))?;
                &mut self.parquet.insert((Arc::clone(&result.schema), writer)).1
            }
        };
        for batch in &result.batches {
            writer
                .write(batch)
                .map_err(|e| Stop::Failed(Failure::from(e)))?;
        }
        Ok(())
    }

    /// Finishes the output: the Parquet footer, then the output file renamed into place.
    fn close(mut self) -> Result<(), Stop> {
        self.out.flush().map_err(write_error)?;
        if let Some((_, writer)) = self.parquet.take() {
            writer.close().map_err(|e| Stop::Failed(Failure::from(e)))?;
        }
        drop(self.out);
        if let Some(file) = self.file {
            file.commit().map_err(|e| Stop::Failed(job_failure(e)))?;
        }
        Ok(())
    }
}

fn csv(result: &StatementResult) -> Result<Vec<u8>, Failure> {
    let mut writer = datafusion::arrow::csv::WriterBuilder::new()
        .with_header(true)
        .with_timestamp_format(paylake_jobs::export::TIMESTAMP_FORMAT.to_string())
        .build(Vec::new());
    write_all(&result.schema, &result.batches, |batch| writer.write(batch))?;
    Ok(writer.into_inner())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum JsonLayout {
    /// One array of objects per result.
    Array,
    /// One object per line.
    Lines,
}

fn json(result: &StatementResult, layout: JsonLayout) -> Result<Vec<u8>, Failure> {
    use datafusion::arrow::json::writer::{JsonArray, LineDelimited, WriterBuilder};
    // Explicit nulls: a NULL column is still present in every object.
    let builder = WriterBuilder::new().with_explicit_nulls(true);
    let mut text = match layout {
        JsonLayout::Array => {
            let mut writer = builder.build::<_, JsonArray>(Vec::new());
            write_all(&result.schema, &result.batches, |batch| writer.write(batch))?;
            writer.finish()?;
            writer.into_inner()
        }
        JsonLayout::Lines => {
            let mut writer = builder.build::<_, LineDelimited>(Vec::new());
            write_all(&result.schema, &result.batches, |batch| writer.write(batch))?;
            writer.finish()?;
            writer.into_inner()
        }
    };
    if text.is_empty() && layout == JsonLayout::Array {
        text.extend_from_slice(b"[]");
    }
    if !text.is_empty() && !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    Ok(text)
}

/// Writes every batch, or one empty batch so that a CSV header is written for no rows.
fn write_all(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    mut write: impl FnMut(&RecordBatch) -> Result<(), datafusion::arrow::error::ArrowError>,
) -> Result<(), Failure> {
    if batches.is_empty() {
        write(&RecordBatch::new_empty(Arc::clone(schema)))?;
    }
    for batch in batches {
        write(batch)?;
    }
    Ok(())
}
