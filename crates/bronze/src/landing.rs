//! Where `paylake bronze` reads landing files from: a local folder, or a key prefix in an object
//! store (`s3://bucket/landing`), listed and read through object_store.
//!
//! The readers (CSV, JSON lines, gzip/zstd, workbooks) work on local files, so an object is
//! copied into the run's scratch folder under its landing-relative name just before it is
//! hashed and landed, and removed right after: one object on local disk at a time, and the file
//! log and `_source_file` carry the same relative names as for a local landing folder.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use paylake_lake::{LakeError, Location};
use tokio::io::AsyncWriteExt;

use crate::BronzeError;

/// A landing location.
#[derive(Debug, Clone)]
pub enum Landing {
    Folder(PathBuf),
    Store(StoreLanding),
}

/// A landing prefix in an object store.
#[derive(Debug, Clone)]
pub struct StoreLanding {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket`: with a key, how messages name an object.
    bucket_uri: String,
    prefix: ObjectPath,
}

impl Landing {
    /// A landing path or URI: a folder, `file:///absolute/path` or `s3://bucket/prefix` (S3
    /// settings from the `AWS_*` environment variables).
    pub fn parse(uri: &str) -> Result<Self, LakeError> {
        Ok(match Location::parse(uri)? {
            Location::Local(folder) => Self::Folder(folder),
            Location::S3 { bucket, prefix } => Self::Store(StoreLanding {
                store: paylake_lake::s3_store(&bucket)?,
                bucket_uri: format!("s3://{bucket}"),
                prefix,
            }),
        })
    }

    /// How the run summary and messages name the landing location.
    pub fn display(&self) -> String {
        match self {
            Self::Folder(folder) => folder.display().to_string(),
            Self::Store(store) => store.display(),
        }
    }
}

/// An object found under a store landing prefix.
#[derive(Debug, Clone)]
pub(crate) struct ListedObject {
    pub key: ObjectPath,
    /// Its name relative to the landing prefix.
    pub relative: PathBuf,
    pub size: u64,
}

/// What listing a store landing prefix found: objects to land, and names refused unread (a
/// hidden name, as for a local folder: one entry for a hidden "folder", none for what is in it).
pub(crate) struct Listing {
    pub objects: Vec<ListedObject>,
    pub hidden: Vec<(PathBuf, &'static str)>,
}

impl StoreLanding {
    /// `s3://bucket/<key>`: how an error names an object.
    pub(crate) fn uri_of(&self, key: &ObjectPath) -> String {
        format!("{}/{key}", self.bucket_uri)
    }

    /// `s3://bucket/prefix`.
    fn display(&self) -> String {
        if self.prefix.as_ref().is_empty() {
            self.bucket_uri.clone()
        } else {
            self.uri_of(&self.prefix)
        }
    }

    pub(crate) async fn list(&self) -> Result<Listing, BronzeError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let metas: Vec<_> = self
            .store
            .list(prefix)
            .try_collect()
            .await
            .map_err(|source| BronzeError::LandingStore {
                uri: self.display(),
                source,
            })?;
        let skip = self.prefix.parts().count();
        let mut listing = Listing {
            objects: Vec::new(),
            hidden: Vec::new(),
        };
        let mut hidden_seen = HashSet::new();
        for meta in metas {
            let parts: Vec<String> = meta
                .location
                .parts()
                .skip(skip)
                .map(|p| p.as_ref().to_string())
                .collect();
            if let Some(at) = parts.iter().position(|p| p.starts_with('.')) {
                let relative: PathBuf = parts[..=at].iter().collect();
                let reason = if at + 1 < parts.len() {
                    "hidden folder (name starts with '.'): not read, nor anything in it"
                } else {
                    "hidden file (name starts with '.', as editor and system files do): not read"
                };
                if hidden_seen.insert(relative.clone()) {
                    listing.hidden.push((relative, reason));
                }
                continue;
            }
            listing.objects.push(ListedObject {
                relative: parts.iter().collect(),
                key: meta.location,
                size: meta.size,
            });
        }
        Ok(listing)
    }

    /// Copies an object to `to` (its parent folders created), returning the bytes copied.
    pub(crate) async fn fetch(&self, key: &ObjectPath, to: &Path) -> Result<u64, BronzeError> {
        let store_error = |source| BronzeError::LandingStore {
            uri: self.uri_of(key),
            source,
        };
        let local_error = |source| BronzeError::Landing {
            path: to.display().to_string(),
            source,
        };
        if let Some(parent) = to.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(local_error)?;
        }
        let mut stream = self
            .store
            .get(key)
            .await
            .map_err(store_error)?
            .into_stream();
        let mut file = tokio::fs::File::create(to).await.map_err(local_error)?;
        let mut copied = 0u64;
        while let Some(chunk) = stream.try_next().await.map_err(store_error)? {
            file.write_all(&chunk).await.map_err(local_error)?;
            copied += chunk.len() as u64;
        }
        file.flush().await.map_err(local_error)?;
        Ok(copied)
    }
}

/// Removes a fetched copy when the file has been handled, however that ended.
pub(crate) struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::PutPayload;

    fn in_memory(prefix: &str) -> StoreLanding {
        StoreLanding {
            store: Arc::new(InMemory::new()),
            bucket_uri: "s3://bucket".to_string(),
            prefix: ObjectPath::from(prefix),
        }
    }

    #[tokio::test]
    async fn listing_names_objects_relative_to_the_prefix_and_refuses_hidden_ones_once() {
        let landing = in_memory("landing");
        for key in [
            "landing/payments/a.csv",
            "landing/.git/config",
            "landing/.git/HEAD",
            "landing/accounts/.hidden.csv",
            "elsewhere/c.csv",
        ] {
            landing
                .store
                .put(&ObjectPath::from(key), PutPayload::from_static(b"x"))
                .await
                .unwrap();
        }
        let listing = landing.list().await.unwrap();
        let objects: Vec<_> = listing.objects.iter().map(|o| o.relative.clone()).collect();
        assert_eq!(objects, vec![PathBuf::from("payments/a.csv")]);
        let mut hidden: Vec<_> = listing.hidden.iter().map(|(p, _)| p.clone()).collect();
        hidden.sort();
        assert_eq!(
            hidden,
            vec![PathBuf::from(".git"), PathBuf::from("accounts/.hidden.csv")]
        );
        assert_eq!(
            landing.uri_of(&listing.objects[0].key),
            "s3://bucket/landing/payments/a.csv"
        );
        assert_eq!(
            Landing::Store(landing.clone()).display(),
            "s3://bucket/landing"
        );

        let scratch = tempfile::tempdir().unwrap();
        let to = scratch.path().join(&listing.objects[0].relative);
        assert_eq!(
            landing.fetch(&listing.objects[0].key, &to).await.unwrap(),
            1
        );
        assert_eq!(std::fs::read(&to).unwrap(), b"x");
        drop(RemoveOnDrop(to.clone()));
        assert!(!to.exists());
    }

    #[tokio::test]
    async fn a_missing_object_is_named_by_its_uri() {
        let landing = in_memory("landing");
        let scratch = tempfile::tempdir().unwrap();
        let err = landing
            .fetch(
                &ObjectPath::from("landing/gone.csv"),
                &scratch.path().join("x"),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("s3://bucket/landing/gone.csv"),
            "{err}"
        );
    }
}
