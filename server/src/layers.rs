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
    builder = builder.env(std::env::vars())?;
    for (key, value) in flags {
        if let Some(value) = value {
            let value = if key.ends_with(".memory") {
                parse_bytes(value)?.to_string()
            } else {
                value.to_string()
            };
            builder.set_str(key, &value, &format!("flag for {key}"))?;
        }
    }
    Ok(builder.build()?)
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
}
