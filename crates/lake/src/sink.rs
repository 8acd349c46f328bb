//! Whole Parquet objects streamed into the lake: Bronze writes one per landing file and table.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::AsyncArrowWriter;
use object_store::path::Path;

use crate::{Lake, LakeError, Result};

/// Streams record batches into one Parquet object; the object appears only when finished.
pub struct ParquetObjectSink {
    writer: AsyncArrowWriter<object_store::buffered::BufWriter>,
    lake: Lake,
    path: Path,
    rows: u64,
}

impl ParquetObjectSink {
    pub fn create(lake: &Lake, relative: &Path, schema: SchemaRef) -> Result<Self> {
        let absolute = lake.path(relative);
        let object = object_store::buffered::BufWriter::new(lake.store(), absolute);
        let writer =
            AsyncArrowWriter::try_new(object, schema, Some(crate::delta::writer_properties()))
                .map_err(|source| LakeError::Parquet {
                    path: relative.to_string(),
                    source,
                })?;
        Ok(Self {
            writer,
            lake: lake.clone(),
            path: relative.clone(),
            rows: 0,
        })
    }

    pub async fn write(
        &mut self,
        batch: &datafusion::arrow::record_batch::RecordBatch,
    ) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.writer
            .write(batch)
            .await
            .map_err(|source| LakeError::Parquet {
                path: self.path.to_string(),
                source,
            })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Finishes the object: only now does it become visible at its path. Returns the rows
    /// written and the object's size in bytes.
    pub async fn finish(self) -> Result<(u64, u64)> {
        let path = self.path.to_string();
        self.writer
            .close()
            .await
            .map_err(|source| LakeError::Parquet { path, source })?;
        let size = self.lake.size_of(&self.path).await?;
        Ok((self.rows, size))
    }
}
