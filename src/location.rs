//! Where things are: `s3://bucket/key[?versionId=V]` or a local file, and the
//! `s3://bucket/prefix` entries of an allow-list. Parsing only, no I/O, so
//! the configuration can depend on it and nothing else.

use std::path::{Path, PathBuf};

use crate::error::ConfigError;

/// The longest object key S3 stores, in bytes of UTF-8.
const MAX_KEY_BYTES: usize = 1024;

/// A place holding model, manifest or labels bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An S3 object, optionally a specific version.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Object key.
        key: String,
        /// `?versionId=` pin, for reproducible deployments.
        version_id: Option<String>,
    },
    /// A local file.
    File(PathBuf),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::S3 {
                bucket,
                key,
                version_id: Some(v),
            } => write!(f, "s3://{bucket}/{key}?versionId={v}"),
            Location::S3 { bucket, key, .. } => write!(f, "s3://{bucket}/{key}"),
            Location::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Location {
    /// Parses `s3://bucket/key[?versionId=V]`, `file:///path` or a plain
    /// path; `var` names the setting in errors.
    pub fn parse(var: &'static str, value: &str) -> Result<Location, ConfigError> {
        let bad = |expected: &str| ConfigError {
            var,
            value: value.to_string(),
            expected: expected.to_string(),
        };
        let value = value.trim();
        if let Some(rest) = value.strip_prefix("s3://") {
            let (path, query) = match rest.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (rest, None),
            };
            let (bucket, key) = Location::split_s3(path).map_err(bad)?;
            let version_id = match query {
                None => None,
                Some(q) => match q.strip_prefix("versionId=") {
                    Some(v) if !v.is_empty() && v.len() <= MAX_KEY_BYTES && !v.contains('&') => {
                        Some(v.to_string())
                    }
                    _ => {
                        return Err(bad(
                            "expected s3://bucket/key?versionId=VERSION as the only query",
                        ))
                    }
                },
            };
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
                version_id,
            });
        }
        if value.contains("://") && !value.starts_with("file://") {
            return Err(bad(
                "expected s3://bucket/key, file:///path or a local path",
            ));
        }
        Ok(Location::File(local_path(value)))
    }

    /// `bucket/key` of an `s3://` URI, checked: a valid bucket name and a
    /// key naming an object within S3's length limit. The key is taken
    /// verbatim (it may contain `?`).
    pub(crate) fn split_s3(path: &str) -> Result<(&str, &str), &'static str> {
        let (bucket, key) = path
            .split_once('/')
            .ok_or("expected s3://bucket/key: the key is missing")?;
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !bucket_ok {
            return Err(
                "expected s3://bucket/key with a valid bucket name (3-63 lower-case letters, digits, dots, hyphens)",
            );
        }
        if key.is_empty() || key.ends_with('/') {
            return Err("expected s3://bucket/key: the key must name an object, not a prefix");
        }
        // S3's own limit; a longer key also overflows the request URI the
        // SDK builds (which panics rather than returning an error).
        if key.len() > MAX_KEY_BYTES {
            return Err("expected s3://bucket/key with a key of at most 1,024 bytes (S3's limit)");
        }
        Ok((bucket, key))
    }

    /// The same place with another extension (`model.onnx` -> `model.json`);
    /// a version pin is dropped, since it belongs to the model object.
    pub fn with_extension(&self, ext: &str) -> Location {
        match self {
            Location::S3 { bucket, key, .. } => {
                let stem = match key.rsplit_once('.') {
                    Some((stem, e)) if !e.contains('/') => stem,
                    _ => key.as_str(),
                };
                Location::S3 {
                    bucket: bucket.clone(),
                    key: format!("{stem}.{ext}"),
                    version_id: None,
                }
            }
            Location::File(p) => Location::File(p.with_extension(ext)),
        }
    }

    /// A file named `name` in the same folder / prefix.
    pub fn sibling(&self, name: &str) -> Location {
        match self {
            Location::S3 { bucket, key, .. } => {
                let dir = key.rsplit_once('/').map_or("", |(d, _)| d);
                let key = if dir.is_empty() {
                    name.to_string()
                } else {
                    format!("{dir}/{name}")
                };
                Location::S3 {
                    bucket: bucket.clone(),
                    key,
                    version_id: None,
                }
            }
            Location::File(p) => Location::File(p.parent().unwrap_or(Path::new(".")).join(name)),
        }
    }
}

/// A local path from a `file://` URI or a plain path.
pub fn local_path(value: &str) -> PathBuf {
    PathBuf::from(value.strip_prefix("file://").unwrap_or(value))
}

/// One allowed `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedPrefix {
    /// Bucket.
    pub bucket: String,
    /// Key prefix ("" allows the whole bucket).
    pub prefix: String,
}

impl AllowedPrefix {
    /// Whether `s3://bucket/key` is under this prefix. S3 keys are literal,
    /// but tools that normalise paths would read `in/../secret` as `secret`
    /// and `in//x` or `./in/x` differently again: a key with `.`, `..` or
    /// empty segments is refused rather than reasoned about, so the literal
    /// key and every normalisation of it agree on where it is.
    pub fn permits(&self, bucket: &str, key: &str) -> bool {
        let normal = key.split('/').enumerate().all(|(i, s)| {
            s != "." && s != ".." && (!s.is_empty() || i == key.split('/').count() - 1)
        });
        self.bucket == bucket && normal && key.starts_with(&self.prefix)
    }
}

impl std::fmt::Display for AllowedPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Parses `S3_INPUT_ALLOWLIST`: comma-separated `s3://bucket[/prefix]`.
pub fn parse_allowlist(value: &str) -> Result<Vec<AllowedPrefix>, ConfigError> {
    let bad = |reason: String| ConfigError {
        var: "S3_INPUT_ALLOWLIST",
        value: value.to_string(),
        expected: format!("expected comma-separated s3://bucket[/prefix] entries: {reason}"),
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| {
            let rest = entry
                .strip_prefix("s3://")
                .ok_or_else(|| bad(format!("{entry:?} does not start with s3://")))?;
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.len() < 3 || bucket.contains(['*', '?']) || prefix.contains(['*', '?']) {
                return Err(bad(format!(
                    "{entry:?} is not s3://bucket or s3://bucket/prefix (no wildcards)"
                )));
            }
            Ok(AllowedPrefix {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_file_and_plain_locations() {
        assert_eq!(
            Location::parse("MODEL_URI", "s3://my-bucket/a/b/model.onnx?versionId=v1").unwrap(),
            Location::S3 {
                bucket: "my-bucket".into(),
                key: "a/b/model.onnx".into(),
                version_id: Some("v1".into())
            }
        );
        assert_eq!(
            Location::parse("MODEL_URI", "file:///opt/m.onnx").unwrap(),
            Location::File("/opt/m.onnx".into())
        );
        assert_eq!(
            Location::parse("MODEL_URI", "models/m.onnx").unwrap(),
            Location::File("models/m.onnx".into())
        );
        for bad in [
            "s3://",
            "s3://b",
            "s3://Bad_Bucket/k",
            "s3://bucket/",
            "s3://bucket/k?x=1",
            "http://h/m",
        ] {
            assert!(Location::parse("MODEL_URI", bad).is_err(), "{bad}");
        }
    }

    /// Regression: a 70,000-byte key reached the AWS SDK, which panicked
    /// building the request URI (a 500 over HTTP, a stranded SQS batch).
    #[test]
    fn keys_and_versions_longer_than_s3_allows_are_refused() {
        let longest = "k".repeat(MAX_KEY_BYTES);
        assert!(Location::parse("s3_uri", &format!("s3://bucket/{longest}")).is_ok());
        // Multi-byte UTF-8 counts in bytes, as S3 counts.
        let multibyte = "é".repeat(MAX_KEY_BYTES / 2 + 1);
        for too_long in [
            format!("s3://bucket/{longest}k"),
            format!("s3://bucket/{multibyte}"),
            format!("s3://bucket/in/{}", "k".repeat(70_000)),
            format!("s3://bucket/k?versionId={}", "v".repeat(70_000)),
        ] {
            let e = Location::parse("s3_uri", &too_long).unwrap_err();
            assert!(e.to_string().contains("1,024 bytes") || e.to_string().contains("versionId"));
        }
    }

    #[test]
    fn manifest_and_labels_sit_next_to_the_model() {
        let m = Location::parse("MODEL_URI", "s3://b1b/zoo/v2/model.onnx?versionId=9").unwrap();
        assert_eq!(
            m.with_extension("json").to_string(),
            "s3://b1b/zoo/v2/model.json"
        );
        assert_eq!(
            m.sibling("synset.txt").to_string(),
            "s3://b1b/zoo/v2/synset.txt"
        );
        let top = Location::parse("MODEL_URI", "s3://b1b/model").unwrap();
        assert_eq!(
            top.with_extension("json").to_string(),
            "s3://b1b/model.json"
        );
        assert_eq!(top.sibling("l.txt").to_string(), "s3://b1b/l.txt");
        let f = Location::File("/m/x.onnx".into());
        assert_eq!(f.sibling("l.txt"), Location::File("/m/l.txt".into()));
    }

    #[test]
    fn allowlist_entries_are_bucket_and_prefix() {
        let allowed = parse_allowlist("s3://images/in/, s3://other-bucket").unwrap();
        assert!(allowed[0].permits("images", "in/cat.jpg"));
        assert!(!allowed[0].permits("images", "in/../out/x.jpg"));
        for odd in [
            "in/./x.jpg",
            "in//x.jpg",
            "./in/x.jpg",
            "in/a/../../out/x.jpg",
            "in/..",
        ] {
            assert!(!allowed[0].permits("images", odd), "{odd}");
        }
        assert!(!allowed[0].permits("imagesx", "in/a.jpg"));
        assert!(allowed[1].permits("other-bucket", "any/thing.png"));
        for bad in ["images/in", "s3://b*/x", "s3://ab"] {
            let err = parse_allowlist(bad).unwrap_err();
            assert_eq!(err.var, "S3_INPUT_ALLOWLIST", "{bad}");
        }
    }
}
