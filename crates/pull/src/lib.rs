//! `paylake pull`: a source's paginated JSON HTTP API copied into the landing zone, one
//! JSON-lines file per page, for Bronze to land like any other file.
//!
//! The API contract (see README, "Pulling the label API"):
//!
//! ```text
//! GET URL?since=T&cursor=C          both optional; `Authorization: Bearer TOKEN` with --token
//! 200 {"items": [{...}, ...], "next_cursor": "C2"}   next_cursor null on the last page
//! ```
//!
//! `since` (RFC 3339, UTC) asks for items the API learned at or after T; `cursor` continues a
//! listing where the page that returned it ended. Each page with items becomes
//! `<landing>/<source>/api/labels_<fetch time YYYY-MM-DDTHH-MM-SS>_<8 hex of its hash>.jsonl`,
//! written to a hidden temporary file and renamed, so Bronze never sees part of a page, and
//! the name carries the fetch time Bronze reads as the rows' knowledge time.
//!
//! After each page the cursor to continue from is saved in the lake (`_pull/<source>.json`);
//! a pull that stopped (crash, kill, a failure after retries) resumes from it. A page written
//! whose cursor was not saved yet is fetched again on resume: same items, same content hash,
//! so Bronze lands it once. 5xx answers, 408, 429, timeouts, broken connections and bodies
//! that are not complete JSON are retried with exponential backoff; any other 4xx stops the
//! pull at once (the request itself is wrong: credentials, URL, parameters).

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use paylake_lake::{layout, Lake};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The sources that have an API to pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullSource {
    FraudLabels,
}

impl PullSource {
    pub fn name(self) -> &'static str {
        match self {
            Self::FraudLabels => "fraud_labels",
        }
    }

    /// The landing folder its pages go to, below the landing root.
    fn folder(self) -> PathBuf {
        PathBuf::from(self.name()).join("api")
    }

    fn file_prefix(self) -> &'static str {
        match self {
            Self::FraudLabels => "labels",
        }
    }
}

/// A bearer token: never printed, not even by `Debug`.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// How failed requests are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per page, the first included.
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one, at most [`MAX_BACKOFF`].
    pub backoff: Duration,
    /// Limit on one request, connection and body included (`None`: no limit).
    pub timeout: Option<Duration>,
}

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            backoff: Duration::from_secs(1),
            timeout: Some(Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PullOptions {
    pub source: PullSource,
    pub url: url::Url,
    /// Items learned at or after this time; without it, a new pull continues from the start
    /// of the last complete one (or fetches everything the first time).
    pub since: Option<DateTime<Utc>>,
    pub token: Option<Token>,
    /// The landing root (the folder `paylake bronze --landing` reads).
    pub landing: PathBuf,
    pub retry: RetryPolicy,
    /// Testing hook: abort the process once this many pages were written and their cursor
    /// saved (simulates a crash between pages).
    pub abort_after_pages: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The API refused the request (4xx other than 408 and 429): retrying cannot help.
    #[error("{url} answered {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: gave up after {attempts} attempt(s): {last}")]
    GaveUp {
        url: String,
        attempts: u32,
        last: String,
    },
    /// A complete page that breaks the contract.
    #[error("{url}: the page does not follow the API contract: {reason}")]
    Contract { url: String, reason: String },
    #[error("landing folder {}: {source}", path.display())]
    Landing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pull state {path}: {reason}")]
    State { path: String, reason: String },
    #[error(transparent)]
    Lake(#[from] paylake_lake::LakeError),
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

impl PullError {
    /// The request itself is wrong (credentials, URL, parameters): a configuration error.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }
}

/// What a pull did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PullReport {
    pub source: String,
    /// The cursor the pull resumed from, when it continued an interrupted one.
    pub resumed_from: Option<String>,
    pub since: Option<String>,
    pub pages: u64,
    pub empty_pages: u64,
    pub items: u64,
    /// Requests that failed and were retried.
    pub retries: u64,
    /// Files written, relative to the landing root.
    pub files: Vec<String>,
}

/// The pull state kept in the lake between runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct PullState {
    /// The API (URL without query) the state belongs to.
    url: String,
    /// The `since` of the pull in progress.
    since: Option<String>,
    /// Set while a pull is unfinished: where it continues.
    next_cursor: Option<String>,
    /// When the last pull that reached the last page started: the next pull's default `since`.
    completed_from: Option<String>,
    updated_at: String,
}

/// One page as the API sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    items: Vec<serde_json::Value>,
    next_cursor: Option<String>,
}

fn api_identity(url: &url::Url) -> String {
    let mut bare = url.clone();
    bare.set_query(None);
    bare.set_fragment(None);
    bare.to_string()
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

async fn load_state(lake: &Lake, source: PullSource) -> Result<Option<PullState>, PullError> {
    let path = layout::pull_state(source.name());
    let Some(bytes) = lake.get_bytes(&path).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| PullError::State {
            path: path.to_string(),
            reason: format!("not a pull state ({e}); delete it to start over"),
        })
}

async fn save_state(lake: &Lake, source: PullSource, state: &PullState) -> Result<(), PullError> {
    let path = layout::pull_state(source.name());
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| PullError::State {
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    Ok(lake.put_bytes(&path, bytes).await?)
}

/// Pulls every page from where the last pull stopped (or from `since`) to the last page.
pub async fn pull(lake: &Lake, options: &PullOptions) -> Result<PullReport, PullError> {
    let mut client = reqwest::Client::builder();
    if let Some(timeout) = options.retry.timeout {
        client = client.timeout(timeout);
    }
    let client = client
        .build()
        .map_err(|e| PullError::Client(e.to_string()))?;
    let identity = api_identity(&options.url);
    let started = Utc::now();
    let previous = load_state(lake, options.source).await?;
    let requested_since = options.since.map(rfc3339);
    let mut report = PullReport {
        source: options.source.name().to_string(),
        ..Default::default()
    };
    let (since, mut cursor) = match &previous {
        // An unfinished pull of the same API continues, unless another `since` is asked for.
        Some(state)
            if state.url == identity
                && state.next_cursor.is_some()
                && (requested_since.is_none() || requested_since == state.since) =>
        {
            report.resumed_from = state.next_cursor.clone();
            (state.since.clone(), state.next_cursor.clone())
        }
        Some(state) if state.url == identity && requested_since.is_none() => {
            (state.completed_from.clone(), None)
        }
        _ => (requested_since, None),
    };
    report.since = since.clone();
    let folder = options.landing.join(options.source.folder());
    std::fs::create_dir_all(&folder).map_err(|source| PullError::Landing {
        path: folder.clone(),
        source,
    })?;
    remove_stale_temporaries(&folder)?;
    let mut state = PullState {
        url: identity,
        since: since.clone(),
        next_cursor: cursor.clone(),
        completed_from: previous.and_then(|p| p.completed_from),
        updated_at: rfc3339(started),
    };
    loop {
        let mut url = options.url.clone();
        let parameters = [("since", &since), ("cursor", &cursor)];
        for (name, value) in parameters {
            if let Some(value) = value {
                url.query_pairs_mut().append_pair(name, value);
            }
        }
        let (page, retries) = fetch_page(&client, &url, options).await?;
        report.retries += retries;
        report.pages += 1;
        let fetched_at = Utc::now();
        if page.items.is_empty() {
            report.empty_pages += 1;
        } else {
            let written = write_page(&options.landing, options.source, &page.items, fetched_at)?;
            report.items += page.items.len() as u64;
            tracing::info!("pulled {} item(s) into {written}", page.items.len());
            report.files.push(written);
        }
        cursor = page.next_cursor;
        state.next_cursor = cursor.clone();
        state.updated_at = rfc3339(fetched_at);
        if cursor.is_none() {
            state.completed_from = Some(rfc3339(started));
            state.since = None;
        }
        save_state(lake, options.source, &state).await?;
        if let Some(limit) = options.abort_after_pages {
            if report.pages - report.empty_pages >= limit {
                tracing::error!("PAYLAKE_PULL_ABORT_AFTER_PAGES reached: aborting as a crash test");
                std::process::abort();
            }
        }
        if cursor.is_none() {
            return Ok(report);
        }
    }
}

/// Why one attempt failed, and whether another may succeed.
enum AttemptError {
    Retry(String),
    Stop(PullError),
}

/// One page, retried with backoff; also how many attempts failed before it came.
async fn fetch_page(
    client: &reqwest::Client,
    url: &url::Url,
    options: &PullOptions,
) -> Result<(Page, u64), PullError> {
    let attempts = options.retry.attempts.max(1);
    let mut delay = options.retry.backoff;
    let mut last = String::new();
    for attempt in 1..=attempts {
        if attempt > 1 {
            tracing::warn!(
                "{url}: attempt {} failed ({last}); retrying in {delay:?}",
                attempt - 1
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_BACKOFF);
        }
        match fetch_once(client, url, options).await {
            Ok(page) => return Ok((page, u64::from(attempt - 1))),
            Err(AttemptError::Stop(error)) => return Err(error),
            Err(AttemptError::Retry(reason)) => last = reason,
        }
    }
    Err(PullError::GaveUp {
        url: url.to_string(),
        attempts,
        last,
    })
}

/// The first bytes of a body, as text, for an error message.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

async fn fetch_once(
    client: &reqwest::Client,
    url: &url::Url,
    options: &PullOptions,
) -> Result<Page, AttemptError> {
    let mut request = client.get(url.clone());
    if let Some(Token(token)) = &options.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| {
        AttemptError::Retry(if e.is_timeout() {
            format!(
                "no answer within {:?}",
                options.retry.timeout.unwrap_or_default()
            )
        } else {
            format!("request failed: {}", error_chain(&e))
        })
    })?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| {
        AttemptError::Retry(format!(
            "the body of a {status} answer broke off: {}",
            error_chain(&e)
        ))
    })?;
    if status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
    {
        return Err(AttemptError::Retry(format!("answered {status}")));
    }
    if !status.is_success() {
        return Err(AttemptError::Stop(PullError::Refused {
            url: url.to_string(),
            status: status.as_u16(),
            body: excerpt(&body),
        }));
    }
    serde_json::from_slice::<Page>(&body)
        .map_err(|e| match e.classify() {
            // A page that ends early was cut in transit: fetch it again.
            serde_json::error::Category::Eof | serde_json::error::Category::Syntax => {
                AttemptError::Retry(format!(
                    "incomplete page ({} bytes, {e}): not written",
                    body.len()
                ))
            }
            _ => AttemptError::Stop(PullError::Contract {
                url: url.to_string(),
                reason: e.to_string(),
            }),
        })
        .and_then(
            |page| match page.items.iter().position(|item| !item.is_object()) {
                Some(index) => Err(AttemptError::Stop(PullError::Contract {
                    url: url.to_string(),
                    reason: format!("item {} is not a JSON object", index + 1),
                })),
                None => Ok(page),
            },
        )
}

/// An error and its causes on one line (reqwest's own message omits them).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

const TEMPORARY_PREFIX: &str = ".pull-";

/// Temporary files a killed pull left behind (hidden: Bronze never lands them).
fn remove_stale_temporaries(folder: &Path) -> Result<(), PullError> {
    let landing_error = |source| PullError::Landing {
        path: folder.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(folder).map_err(landing_error)? {
        let entry = entry.map_err(landing_error)?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(TEMPORARY_PREFIX)
        {
            std::fs::remove_file(entry.path()).map_err(landing_error)?;
        }
    }
    Ok(())
}

/// The page's items as JSON lines.
fn page_lines(items: &[serde_json::Value]) -> Vec<u8> {
    let mut text = Vec::new();
    for item in items {
        text.extend_from_slice(item.to_string().as_bytes());
        text.push(b'\n');
    }
    text
}

/// Writes one page whole (temporary file, flushed, renamed) and returns its landing path.
fn write_page(
    landing: &Path,
    source: PullSource,
    items: &[serde_json::Value],
    fetched_at: DateTime<Utc>,
) -> Result<String, PullError> {
    use std::io::Write;
    let text = page_lines(items);
    let hash = hex::encode(Sha256::digest(&text));
    let name = format!(
        "{}_{}_{}.jsonl",
        source.file_prefix(),
        fetched_at.format("%Y-%m-%dT%H-%M-%S"),
        &hash[..8]
    );
    let folder = landing.join(source.folder());
    let landing_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PullError::Landing { path, source }
    };
    let temporary = folder.join(format!("{TEMPORARY_PREFIX}{}-{name}", std::process::id()));
    let target = folder.join(&name);
    let mut file = std::fs::File::create(&temporary).map_err(landing_error(&temporary))?;
    file.write_all(&text).map_err(landing_error(&temporary))?;
    file.sync_all().map_err(landing_error(&temporary))?;
    drop(file);
    std::fs::rename(&temporary, &target).map_err(landing_error(&target))?;
    // The rename itself must survive a crash too.
    if let Ok(dir) = std::fs::File::open(&folder) {
        let _ = dir.sync_all();
    }
    Ok(source
        .folder()
        .join(name)
        .to_string_lossy()
        .replace('\\', "/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_files_carry_their_fetch_time_and_content_hash() {
        let landing = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(landing.path().join("fraud_labels/api")).unwrap();
        let items = vec![serde_json::json!({"payment_id": "PAY1", "fraud_type": "money_mule"})];
        let at = DateTime::parse_from_rfc3339("2026-11-28T04:10:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let name = write_page(landing.path(), PullSource::FraudLabels, &items, at).unwrap();
        assert!(
            name.starts_with("fraud_labels/api/labels_2026-11-28T04-10-05_"),
            "{name}"
        );
        let text = std::fs::read_to_string(landing.path().join(&name)).unwrap();
        assert_eq!(
            text,
            "{\"fraud_type\":\"money_mule\",\"payment_id\":\"PAY1\"}\n"
        );
        // The same items make the same content, whatever the fetch time: Bronze lands it once.
        let again =
            write_page(landing.path(), PullSource::FraudLabels, &items, Utc::now()).unwrap();
        assert_eq!(name.rsplit('_').next(), again.rsplit('_').next());
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let token = Token::new("s3cr3t-value");
        assert!(!format!("{token:?}").contains("s3cr3t"));
    }
}
