//! The configuration a role runs with, in layers: the documented defaults, the `--config` file,
//! `EMBER_<SECTION>_<KEY>` environment variables, then command-line flags.

use std::path::PathBuf;

use ember_config::{ConfigBuilder, EmberConfig};

/// Builds the configuration: defaults, file, environment, then flags.
pub fn load_config(
    file: Option<&PathBuf>,
    flags: &[(&str, Option<&String>)],
) -> anyhow::Result<EmberConfig> {
    let mut builder = ConfigBuilder::new();
    if let Some(path) = file {
        builder = builder.file(path)?;
    }
    builder = builder.env(std::env::vars().map(with_byte_units))?;
    for (key, value) in flags {
        if let Some(value) = value {
            let value = if key.ends_with("memory") {
                parse_bytes(value)?.to_string()
            } else {
                value.to_string()
            };
            builder.set_str(key, &value, &format!("flag for {key}"))?;
        }
    }
    Ok(builder.build()?)
}

/// An `EMBER_*_MEMORY` variable's size with a unit (`EMBER_EXECUTOR_MEMORY=2GiB`) as bytes, as
/// the flags take them; anything else as it is (the configuration refuses what is not a size).
fn with_byte_units((name, value): (String, String)) -> (String, String) {
    if !(name.starts_with("EMBER_") && name.ends_with("_MEMORY")) {
        return (name, value);
    }
    match parse_bytes(&value) {
        Ok(bytes) => (name, bytes.to_string()),
        Err(_) => (name, value),
    }
}

/// `4GiB`, `512MB`, `1024` → bytes.
fn parse_bytes(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid size {text:?}"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => anyhow::bail!("unknown size unit {other:?} in {text:?}"),
    };
    Ok((number * multiplier as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn memory_variables_take_units() {
        let var = |name: &str, value: &str| with_byte_units((name.into(), value.into())).1;
        assert_eq!(
            var("EMBER_EXECUTOR_MEMORY", "2GiB"),
            (2u64 << 30).to_string()
        );
        assert_eq!(
            var("EMBER_CLUSTER_MANAGER_EXECUTOR_MEMORY", "512MiB"),
            (512u64 << 20).to_string()
        );
        assert_eq!(var("EMBER_EXECUTOR_MEMORY", "1024"), "1024");
        // Not a size: left for the configuration to refuse by name.
        assert_eq!(var("EMBER_EXECUTOR_MEMORY", "lots"), "lots");
        assert_eq!(var("EMBER_EXECUTOR_SLOTS", "2GiB"), "2GiB");
        let config = ember_config::ConfigBuilder::new()
            .env([with_byte_units((
                "EMBER_EXECUTOR_MEMORY".into(),
                "2GiB".into(),
            ))])
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(config.executor.memory, 2 << 30);
    }
}
