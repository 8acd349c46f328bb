//! The writer lease: one writing step at a time per lake.
//!
//! A step takes the lease by creating `_locks/writer.json` only if it is absent (object_store
//! `PutMode::Create`: a rename-if-absent on disk, a conditional put on S3). The lease names its
//! owner and expires, so a run that crashed blocks others only until its expiry, or not at all
//! when it ran on this host and its process is gone.

use chrono::{DateTime, Duration, Utc};
use object_store::{PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::layout;
use crate::{Lake, LakeError, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaseInfo {
    pub owner: String,
    pub step: String,
    pub host: String,
    pub pid: u32,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl LeaseInfo {
    fn is_stale(&self, now: DateTime<Utc>) -> bool {
        if now >= self.expires_at {
            return true;
        }
        // Same host: a holder whose process is gone will never release it.
        self.host == host_name() && !process_alive(self.pid)
    }
}

/// A held lease; [`WriterLease::release`] gives it back.
#[derive(Debug)]
pub struct WriterLease {
    lake: Lake,
    info: LeaseInfo,
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl WriterLease {
    /// Takes the lake's writer lease for `ttl`, or says who holds it.
    pub async fn acquire(lake: &Lake, owner: &str, step: &str, ttl: Duration) -> Result<Self> {
        let now = Utc::now();
        let info = LeaseInfo {
            owner: owner.to_string(),
            step: step.to_string(),
            host: host_name(),
            pid: std::process::id(),
            acquired_at: now,
            expires_at: now + ttl,
        };
        let bytes = serde_json::to_vec_pretty(&info).map_err(|e| LakeError::Corrupt {
            path: layout::writer_lease().to_string(),
            reason: e.to_string(),
        })?;
        let path = lake.path(&layout::writer_lease());
        for _ in 0..2 {
            let put = lake
                .store()
                .put_opts(
                    &path,
                    PutPayload::from(bytes.clone()),
                    PutOptions::from(PutMode::Create),
                )
                .await;
            match put {
                Ok(_) => {
                    return Ok(Self {
                        lake: lake.clone(),
                        info,
                    })
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let holder = Self::holder(lake).await?;
                    match holder {
                        Some(h) if !h.is_stale(now) => {
                            return Err(LakeError::Busy {
                                owner: h.owner,
                                step: h.step,
                                host: h.host,
                                pid: h.pid,
                                until: h.expires_at.to_rfc3339(),
                            })
                        }
                        // Stale or vanished: take it over.
                        _ => lake.delete(&layout::writer_lease()).await?,
                    }
                }
                Err(source) => {
                    return Err(LakeError::Store {
                        path: layout::writer_lease().to_string(),
                        source,
                    })
                }
            }
        }
        Err(LakeError::Corrupt {
            path: layout::writer_lease().to_string(),
            reason: "the lease changed hands while it was being taken".into(),
        })
    }

    /// Who holds the lease now, if anyone.
    pub async fn holder(lake: &Lake) -> Result<Option<LeaseInfo>> {
        let Some(bytes) = lake.get_bytes(&layout::writer_lease()).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// Gives the lease back (only if it is still ours).
    pub async fn release(self) -> Result<()> {
        if Self::holder(&self.lake).await?.as_ref() == Some(&self.info) {
            self.lake.delete(&layout::writer_lease()).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_writer_is_refused_until_the_first_releases() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let first = WriterLease::acquire(&lake, "run-1", "silver", Duration::hours(1))
            .await
            .unwrap();
        let refused = WriterLease::acquire(&lake, "run-2", "gold", Duration::hours(1))
            .await
            .unwrap_err();
        let message = refused.to_string();
        assert!(
            message.contains("run-1") && message.contains("silver"),
            "{message}"
        );
        first.release().await.unwrap();
        WriterLease::acquire(&lake, "run-2", "gold", Duration::hours(1))
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn an_expired_or_orphaned_lease_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        // Expired a second ago.
        let stale = WriterLease::acquire(&lake, "crashed", "gold", Duration::seconds(-1))
            .await
            .unwrap();
        std::mem::forget(stale);
        let taken = WriterLease::acquire(&lake, "next", "gold", Duration::hours(1))
            .await
            .unwrap();
        assert_eq!(
            WriterLease::holder(&lake).await.unwrap().unwrap().owner,
            "next"
        );
        taken.release().await.unwrap();
        // Held by a process of this host that no longer exists.
        let mut orphan = LeaseInfo {
            owner: "dead".into(),
            step: "silver".into(),
            host: host_name(),
            pid: u32::MAX,
            acquired_at: Utc::now(),
            expires_at: Utc::now() + Duration::hours(1),
        };
        lake.put_bytes(
            &layout::writer_lease(),
            serde_json::to_vec(&orphan).unwrap(),
        )
        .await
        .unwrap();
        WriterLease::acquire(&lake, "next", "silver", Duration::hours(1))
            .await
            .unwrap();
        orphan.pid = std::process::id();
        assert!(!orphan.is_stale(Utc::now()), "a live holder keeps it");
    }
}
