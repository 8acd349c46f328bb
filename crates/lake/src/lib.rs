//! The lake: where paylake keeps its tables, and the only code that touches lake storage.
//!
//! Every read and write of lake data goes through [`object_store`], so a local folder and an
//! object-store bucket are the same to the rest of the code. [`layout`] owns every path;
//! [`delta`] owns the table format (every table is a Delta table), [`catalog`] resolves
//! `layer.table` names to tables for DataFusion.

pub mod buckets;
pub mod catalog;
pub mod delta;
pub mod files_scan;
pub mod layout;
pub mod lease;
pub mod sink;

use std::sync::Arc;

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("invalid lake URI '{uri}': {reason}")]
    InvalidUri { uri: String, reason: String },
    #[error("lake storage error at {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("lake metadata {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("query engine error while {doing}: {source}")]
    Engine {
        doing: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error("Delta Lake error while {doing}: {source}")]
    Delta {
        doing: String,
        #[source]
        source: Box<deltalake_core::DeltaTableError>,
    },
    #[error("no lake at {path}: {reason} (check --lake / PAYLAKE_LAKE; `paylake bronze` creates a lake)")]
    NoLake { path: String, reason: String },
    #[error("{table} has not been built yet")]
    NoSuchTable { table: String },
    #[error("commit to {table} failed, nothing of this run is visible in it (another writer may have committed first: run again): {reason}")]
    CommitConflict { table: String, reason: String },
    #[error("the lake is being written by run {owner} ({step}, pid {pid} on {host}) until {until} at the latest; try again when it has finished")]
    Busy {
        owner: String,
        step: String,
        host: String,
        pid: u32,
        until: String,
    },
    #[error("Arrow: {0}")]
    Arrow(String),
    #[error("Parquet error at {path}: {source}")]
    Parquet {
        path: String,
        #[source]
        source: datafusion::parquet::errors::ParquetError,
    },
}

pub type Result<T, E = LakeError> = std::result::Result<T, E>;

/// A lake root: an object store plus the prefix inside it where the lake lives.
#[derive(Debug, Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    /// The scheme and authority DataFusion resolves the store by, e.g. `file:///`.
    store_url: ObjectStoreUrl,
    root: Path,
    display: String,
    /// The lake's folder when it is on this machine; `None` for an object-store lake.
    folder: Option<std::path::PathBuf>,
    /// How tables are handed to query engines.
    scans: TableScans,
}

/// How the lake hands a table version to a query engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TableScans {
    /// Delta Lake's own DataFusion provider (statistics, partition pruning).
    #[default]
    Delta,
    /// The version's data files as plain Parquet listing scans: a plan that serializes, so a
    /// Ballista cluster can run it (executors need no Delta code, only the object store).
    ParquetFiles,
}

/// Where a lake or landing URI points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A plain path (`lake/`) or `file:///absolute/path`.
    Local(std::path::PathBuf),
    /// `s3://bucket/prefix`: an S3 bucket (AWS or any S3-compatible store) and a key prefix,
    /// possibly empty.
    S3 { bucket: String, prefix: Path },
}

impl Location {
    /// Parses a lake or landing URI. Schemes other than `file` and `s3` are refused, naming the
    /// scheme, so a typo never becomes a local folder called `gs:`.
    pub fn parse(uri: &str) -> Result<Self> {
        let invalid = |reason: &str| LakeError::InvalidUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        if uri.trim().is_empty() {
            return Err(invalid("empty path"));
        }
        let Some((scheme, _)) = uri.split_once("://") else {
            return Ok(Self::Local(std::path::PathBuf::from(uri)));
        };
        match scheme {
            "file" => {
                let rest = &uri["file://".len()..];
                if !rest.starts_with('/') {
                    return Err(invalid("file:// URIs must be absolute (file:///path)"));
                }
                Ok(Self::Local(std::path::PathBuf::from(rest)))
            }
            "s3" => {
                let url = Url::parse(uri).map_err(|e| invalid(&e.to_string()))?;
                let bucket = url.host_str().unwrap_or_default();
                if bucket.is_empty() {
                    return Err(invalid("no bucket (use s3://bucket/prefix)"));
                }
                if url.query().is_some() || url.fragment().is_some() {
                    return Err(invalid(
                        "settings go in AWS_* environment variables, not in the URI",
                    ));
                }
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(invalid(
                        "credentials go in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, not in the URI",
                    ));
                }
                let prefix = Path::from_url_path(url.path())
                    .map_err(|e| invalid(&format!("not a usable key prefix: {e}")))?;
                Ok(Self::S3 {
                    bucket: bucket.to_string(),
                    prefix,
                })
            }
            other => Err(invalid(&format!(
                "scheme '{other}' is not supported by this build \
                 (use a local path, file:///absolute/path or s3://bucket/prefix)"
            ))),
        }
    }
}

/// An S3 bucket's store, configured from the standard `AWS_*` environment variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
/// `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, …). Errors name the bucket, never a credential.
pub fn s3_store(bucket: &str) -> Result<Arc<dyn ObjectStore>> {
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| LakeError::InvalidUri {
            uri: format!("s3://{bucket}"),
            reason: format!("cannot configure the S3 store: {e}"),
        })?;
    Ok(Arc::new(store))
}

/// `s3://bucket/prefix` for messages.
fn s3_display(bucket: &str, prefix: &Path) -> String {
    if prefix.as_ref().is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    }
}

impl Lake {
    /// Opens a lake from a URI: a plain path (`lake/`), `file:///abs/path`, or `s3://bucket/prefix`.
    ///
    /// Local folders are created when missing: only a step that lands data should do this. On
    /// an object store nothing is created: objects appear as they are written.
    pub fn open(uri: &str) -> Result<Self> {
        match Location::parse(uri)? {
            Location::Local(local_dir) => {
                std::fs::create_dir_all(&local_dir).map_err(|e| LakeError::InvalidUri {
                    uri: uri.to_string(),
                    reason: format!("cannot create the lake folder: {e}"),
                })?;
                Self::open_folder(uri, &local_dir)
            }
            Location::S3 { bucket, prefix } => Self::open_s3(uri, &bucket, prefix),
        }
    }

    /// Opens a lake that must already exist: a folder (or key prefix) holding at least one of
    /// the lake's own top-level folders ([`layout::LAKE_FOLDERS`]). Nothing is created, so a
    /// mistyped path is [`LakeError::NoLake`] instead of a new empty lake.
    pub async fn open_existing(uri: &str) -> Result<Self> {
        match Location::parse(uri)? {
            Location::Local(local_dir) => {
                let holds_a_lake = layout::LAKE_FOLDERS
                    .iter()
                    .any(|folder| local_dir.join(folder).is_dir());
                if !holds_a_lake {
                    let reason = if local_dir.is_dir() {
                        "the folder holds no lake"
                    } else {
                        "the folder does not exist"
                    };
                    return Err(LakeError::NoLake {
                        path: local_dir.display().to_string(),
                        reason: reason.to_string(),
                    });
                }
                Self::open_folder(uri, &local_dir)
            }
            Location::S3 { bucket, prefix } => {
                let lake = Self::open_s3(uri, &bucket, prefix)?;
                let at_bucket_root = lake.root.as_ref().is_empty();
                let top = lake
                    .store
                    .list_with_delimiter((!at_bucket_root).then_some(&lake.root))
                    .await
                    .map_err(|source| LakeError::Store {
                        path: lake.display.clone(),
                        source,
                    })?;
                let holds_a_lake = top.common_prefixes.iter().any(|folder| {
                    folder
                        .filename()
                        .is_some_and(|name| layout::LAKE_FOLDERS.contains(&name))
                });
                if !holds_a_lake {
                    return Err(LakeError::NoLake {
                        path: lake.display,
                        reason: "the prefix holds none of the lake's folders".to_string(),
                    });
                }
                Ok(lake)
            }
        }
    }

    fn open_s3(uri: &str, bucket: &str, prefix: Path) -> Result<Self> {
        let store_url =
            ObjectStoreUrl::parse(format!("s3://{bucket}")).map_err(|e| LakeError::InvalidUri {
                uri: uri.to_string(),
                reason: format!("cannot build store URL: {e}"),
            })?;
        Ok(Self {
            store: s3_store(bucket)?,
            store_url,
            display: s3_display(bucket, &prefix),
            root: prefix,
            folder: None,
            scans: TableScans::Delta,
        })
    }

    fn open_folder(uri: &str, local_dir: &std::path::Path) -> Result<Self> {
        let invalid = |reason: &str| LakeError::InvalidUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let absolute = std::fs::canonicalize(local_dir)
            .map_err(|e| invalid(&format!("cannot resolve the lake folder: {e}")))?;
        let root = Path::from_absolute_path(&absolute)
            .map_err(|e| invalid(&format!("not a usable path: {e}")))?;
        let store_url = ObjectStoreUrl::parse("file://")
            .map_err(|e| invalid(&format!("cannot build store URL: {e}")))?;
        Ok(Self {
            store: Arc::new(LocalFileSystem::new()),
            store_url,
            root,
            display: absolute.display().to_string(),
            folder: Some(absolute),
            scans: TableScans::Delta,
        })
    }

    /// A lake over any store, addressed as `store_url` (tests: an in-memory store posing as
    /// S3).
    #[cfg(test)]
    pub(crate) fn over_store(store: Arc<dyn ObjectStore>, store_url: &str, root: &str) -> Self {
        Self {
            store,
            store_url: ObjectStoreUrl::parse(store_url).expect("a test store URL"),
            root: Path::from(root),
            display: format!("{store_url}/{root}"),
            folder: None,
            scans: TableScans::Delta,
        }
    }

    /// The same lake, handing its tables to engines as `scans`.
    pub fn with_table_scans(mut self, scans: TableScans) -> Self {
        self.scans = scans;
        self
    }

    pub fn table_scans(&self) -> TableScans {
        self.scans
    }

    /// The URL of a lake-relative object, as query engines address it.
    pub fn object_url(&self, relative: &Path) -> String {
        format!("{}{}", self.store_url.as_str(), self.path(relative))
    }

    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    /// The store seen from a lake-relative folder, so that paths inside it are relative to it.
    pub fn store_at(&self, relative: &Path) -> Arc<dyn ObjectStore> {
        Arc::new(object_store::prefix::PrefixStore::new(
            self.store(),
            self.path(relative),
        ))
    }

    /// The size in bytes of an object.
    pub async fn size_of(&self, relative: &Path) -> Result<u64> {
        let meta = self
            .store
            .head(&self.path(relative))
            .await
            .map_err(self.store_error(relative))?;
        Ok(meta.size)
    }

    /// The lake's folder on this machine (absolute, symlinks resolved) when the lake is local:
    /// exports and other ordinary files must stay out of it. `None` for an object-store lake.
    pub fn local_folder(&self) -> Option<&std::path::Path> {
        self.folder.as_deref()
    }

    /// A human-readable name of the lake root, for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The absolute object path of a lake-relative path.
    pub fn path(&self, relative: &Path) -> Path {
        let mut joined = self.root.clone();
        for part in relative.parts() {
            joined = joined.join(part);
        }
        joined
    }

    /// The URL DataFusion uses to address a lake-relative folder (ends with `/`).
    pub fn folder_url(&self, relative: &Path) -> String {
        format!("{}{}/", self.store_url.as_str(), self.path(relative))
    }

    /// Makes the lake's store known to a DataFusion session.
    pub fn register_with(&self, ctx: &SessionContext) -> Result<()> {
        let url = Url::parse(self.store_url.as_str()).map_err(|e| LakeError::InvalidUri {
            uri: self.store_url.to_string(),
            reason: e.to_string(),
        })?;
        ctx.register_object_store(&url, self.store());
        Ok(())
    }

    fn store_error(&self, relative: &Path) -> impl FnOnce(object_store::Error) -> LakeError + '_ {
        let path = format!("{}/{}", self.display, relative);
        move |source| LakeError::Store { path, source }
    }

    /// All objects below a lake-relative prefix, sorted by path.
    pub async fn list(&self, relative: &Path) -> Result<Vec<ObjectMeta>> {
        let prefix = self.path(relative);
        let mut objects: Vec<ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(self.store_error(relative))?;
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(objects)
    }

    /// Lake-relative path of an object listed by [`Lake::list`].
    pub fn relative(&self, absolute: &Path) -> Path {
        let root_parts = self.root.parts().count();
        Path::from_iter(absolute.parts().skip(root_parts))
    }

    pub async fn get_bytes(&self, relative: &Path) -> Result<Option<Vec<u8>>> {
        match self.store.get(&self.path(relative)).await {
            Ok(result) => {
                let bytes = result.bytes().await.map_err(self.store_error(relative))?;
                Ok(Some(bytes.to_vec()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_error(relative)(e)),
        }
    }

    /// Writes a whole object atomically (readers see the old object or the new one, never part).
    pub async fn put_bytes(&self, relative: &Path, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&self.path(relative), PutPayload::from(bytes))
            .await
            .map_err(self.store_error(relative))?;
        Ok(())
    }

    pub async fn delete(&self, relative: &Path) -> Result<()> {
        match self.store.delete(&self.path(relative)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_error(relative)(e)),
        }
    }

    /// Removes empty folders below a lake-relative prefix. Object stores have no folders; a
    /// local lake does, and deleting objects leaves them behind.
    pub fn prune_empty_folders(&self, relative: &Path) {
        if self.folder.is_none() {
            return;
        }
        fn prune(dir: &std::path::Path) -> bool {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return false;
            };
            let mut empty = true;
            for entry in entries.flatten() {
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if !(is_dir && prune(&entry.path())) {
                    empty = false;
                }
            }
            empty && std::fs::remove_dir(dir).is_ok()
        }
        let local = std::path::Path::new("/").join(self.path(relative).as_ref());
        if let Ok(entries) = std::fs::read_dir(&local) {
            for entry in entries.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    prune(&entry.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_round_trip_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().join("lake").to_str().unwrap()).unwrap();
        let path = Path::from("quality/gates/silver.json");
        assert_eq!(lake.get_bytes(&path).await.unwrap(), None);
        lake.put_bytes(&path, b"{}".to_vec()).await.unwrap();
        assert_eq!(lake.get_bytes(&path).await.unwrap(), Some(b"{}".to_vec()));
        let listed = lake.list(&Path::from("quality")).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(lake.relative(&listed[0].location), path);
        assert!(dir.path().join("lake/quality/gates/silver.json").exists());
        assert!(lake
            .folder_url(&Path::from("silver/payments"))
            .starts_with("file:///"));
    }

    #[test]
    fn lake_uris_name_a_folder_or_an_s3_prefix() {
        assert_eq!(
            Location::parse("lake/").unwrap(),
            Location::Local("lake/".into())
        );
        assert_eq!(
            Location::parse("file:///srv/lake").unwrap(),
            Location::Local("/srv/lake".into())
        );
        assert_eq!(
            Location::parse("s3://bank-lake/prod/lake/").unwrap(),
            Location::S3 {
                bucket: "bank-lake".into(),
                prefix: Path::from("prod/lake"),
            }
        );
        assert_eq!(
            Location::parse("s3://bank-lake").unwrap(),
            Location::S3 {
                bucket: "bank-lake".into(),
                prefix: Path::default(),
            }
        );
    }

    #[test]
    fn unsupported_schemes_are_configuration_errors() {
        for uri in ["gs://bucket/lake", "az://container/lake", "hdfs://nn/lake"] {
            let err = Lake::open(uri).unwrap_err();
            let scheme = uri.split("://").next().unwrap();
            assert!(
                err.to_string().contains(&format!("scheme '{scheme}'")),
                "{err}"
            );
            assert!(err.to_string().contains("s3://bucket/prefix"), "{err}");
        }
        assert!(Lake::open("file://relative").is_err());
        let err = Location::parse("s3:///lake").unwrap_err();
        assert!(err.to_string().contains("no bucket"), "{err}");
        let err = Location::parse("s3://key:secret@bucket/lake").unwrap_err();
        assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
    }

    #[test]
    fn an_s3_lake_is_addressed_by_bucket_and_prefix_and_creates_nothing() {
        let lake = Lake::open("s3://bank-lake/prod/lake").unwrap();
        assert_eq!(lake.display(), "s3://bank-lake/prod/lake");
        assert_eq!(lake.local_folder(), None);
        assert_eq!(
            lake.folder_url(&Path::from("silver/payments")),
            "s3://bank-lake/prod/lake/silver/payments/"
        );
        assert_eq!(
            lake.relative(&Path::from("prod/lake/gold/x.parquet")),
            Path::from("gold/x.parquet")
        );
    }

    #[tokio::test]
    async fn opening_an_existing_lake_never_creates_one() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("typo");
        let err = Lake::open_existing(missing.to_str().unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, LakeError::NoLake { .. }), "{err}");
        assert!(!missing.exists(), "a read-only open created the folder");
        let not_a_lake = dir.path().join("empty");
        std::fs::create_dir(&not_a_lake).unwrap();
        let err = Lake::open_existing(not_a_lake.to_str().unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("holds no lake"), "{err}");
        std::fs::create_dir(not_a_lake.join("bronze")).unwrap();
        assert!(Lake::open_existing(not_a_lake.to_str().unwrap())
            .await
            .is_ok());
    }
}
