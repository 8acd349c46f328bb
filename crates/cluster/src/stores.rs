//! The object stores a scheduler and its executors resolve lake URLs with: the local file
//! system (a folder every node mounts at the same path) and S3 buckets configured from the
//! standard `AWS_*` environment variables, created on first use.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use datafusion::common::{exec_datafusion_err, Result};
use datafusion::execution::object_store::ObjectStoreRegistry;
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use url::Url;

#[derive(Debug, Default)]
pub struct LakeStores {
    stores: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
}

fn key(url: &Url) -> String {
    format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default())
}

impl ObjectStoreRegistry for LakeStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.stores.write().ok()?.insert(key(url), store)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let key = key(url);
        if let Some(store) = self.stores.read().ok().and_then(|s| s.get(&key).cloned()) {
            return Ok(store);
        }
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "file" => Arc::new(LocalFileSystem::new()),
            "s3" | "s3a" => {
                let bucket = url
                    .host_str()
                    .ok_or_else(|| exec_datafusion_err!("{url} names no bucket"))?;
                paylake_lake::s3_store(bucket).map_err(|e| exec_datafusion_err!("{e}"))?
            }
            other => {
                return Err(exec_datafusion_err!(
                    "no object store for {key}: paylake's cluster reads file:// and s3:// lakes, not {other}://"
                ))
            }
        };
        if let Ok(mut stores) = self.stores.write() {
            stores.insert(key, Arc::clone(&store));
        }
        Ok(store)
    }
}
