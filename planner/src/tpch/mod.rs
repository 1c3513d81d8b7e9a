//! TPC-H sample data (generated with tpchgen-arrow into parquet) and the 22 benchmark queries.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatchReader;
use datafusion::error::{DataFusionError, Result};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

/// The eight TPC-H tables.
pub const TABLES: [&str; 8] = [
    "nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem",
];

/// The 22 TPC-H queries, `QUERIES[0]` being Q1.
pub const QUERIES: [&str; 22] = [
    include_str!("queries/q1.sql"),
    include_str!("queries/q2.sql"),
    include_str!("queries/q3.sql"),
    include_str!("queries/q4.sql"),
    include_str!("queries/q5.sql"),
    include_str!("queries/q6.sql"),
    include_str!("queries/q7.sql"),
    include_str!("queries/q8.sql"),
    include_str!("queries/q9.sql"),
    include_str!("queries/q10.sql"),
    include_str!("queries/q11.sql"),
    include_str!("queries/q12.sql"),
    include_str!("queries/q13.sql"),
    include_str!("queries/q14.sql"),
    include_str!("queries/q15.sql"),
    include_str!("queries/q16.sql"),
    include_str!("queries/q17.sql"),
    include_str!("queries/q18.sql"),
    include_str!("queries/q19.sql"),
    include_str!("queries/q20.sql"),
    include_str!("queries/q21.sql"),
    include_str!("queries/q22.sql"),
];

/// The directory holding the tables of one scale factor under `base`.
pub fn scale_dir(base: &Path, scale: f64) -> PathBuf {
    base.join(format!("sf{scale}"))
}

/// Generates TPC-H at `scale` as parquet under `scale_dir(base, scale)/<table>/part-N.parquet`,
/// unless a previous run completed it. Returns the scale directory.
pub fn generate(base: &Path, scale: f64) -> Result<PathBuf> {
    if !(scale > 0.0 && scale <= 1000.0) {
        return Err(DataFusionError::Configuration(format!(
            "tpch scale factor must be in (0, 1000], got {scale}"
        )));
    }
    let dir = scale_dir(base, scale);
    let done = dir.join("_SUCCESS");
    if done.exists() {
        return Ok(dir);
    }
    // Large tables are split into several files so that scans spread over tasks from the start.
    let parts = ((scale * 4.0).ceil() as i32).max(1);
    for table in TABLES {
        let table_dir = dir.join(table);
        let _ = std::fs::remove_dir_all(&table_dir);
        std::fs::create_dir_all(&table_dir)?;
        let table_parts = if matches!(table, "nation" | "region") {
            1
        } else {
            parts
        };
        for part in 1..=table_parts {
            let path = table_dir.join(format!("part-{part}.parquet"));
            write_parquet(&path, table_reader(table, scale, part, table_parts))?;
        }
    }
    std::fs::write(&done, b"")?;
    Ok(dir)
}

fn table_reader(
    table: &str,
    scale: f64,
    part: i32,
    parts: i32,
) -> Box<dyn RecordBatchReader + Send> {
    match table {
        "nation" => Box::new(NationArrow::new(NationGenerator::new(scale, part, parts))),
        "region" => Box::new(RegionArrow::new(RegionGenerator::new(scale, part, parts))),
        "part" => Box::new(PartArrow::new(PartGenerator::new(scale, part, parts))),
        "supplier" => Box::new(SupplierArrow::new(SupplierGenerator::new(
            scale, part, parts,
        ))),
        "partsupp" => Box::new(PartSuppArrow::new(PartSuppGenerator::new(
            scale, part, parts,
        ))),
        "customer" => Box::new(CustomerArrow::new(CustomerGenerator::new(
            scale, part, parts,
        ))),
        "orders" => Box::new(OrderArrow::new(OrderGenerator::new(scale, part, parts))),
        _ => Box::new(LineItemArrow::new(LineItemGenerator::new(
            scale, part, parts,
        ))),
    }
}

fn write_parquet(path: &Path, reader: Box<dyn RecordBatchReader + Send>) -> Result<()> {
    let tmp = path.with_extension("parquet.inprogress");
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let file = std::fs::File::create(&tmp)?;
    let mut writer = ArrowWriter::try_new(file, reader.schema(), Some(props))?;
    for batch in reader {
        writer.write(&batch?)?;
    }
    writer.close()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Registers the generated tables in `schema` of the context's default catalog.
pub async fn register(
    ctx: &datafusion::prelude::SessionContext,
    schema: &str,
    dir: &Path,
) -> Result<()> {
    use datafusion::catalog::MemorySchemaProvider;
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::{
        ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
    };

    let catalog_name = ctx
        .state()
        .config()
        .options()
        .catalog
        .default_catalog
        .clone();
    let catalog = ctx.catalog(&catalog_name).ok_or_else(|| {
        DataFusionError::Configuration(format!("no catalog named {catalog_name}"))
    })?;
    let provider = match catalog.schema(schema) {
        Some(provider) => provider,
        None => {
            let provider = Arc::new(MemorySchemaProvider::new());
            catalog.register_schema(schema, Arc::clone(&provider) as _)?;
            provider
        }
    };
    for table in TABLES {
        let url = ListingTableUrl::parse(format!("{}/", dir.join(table).display()))?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .infer_schema(&ctx.state())
            .await?;
        provider.register_table(table.to_string(), Arc::new(ListingTable::try_new(config)?))?;
    }
    Ok(())
}
