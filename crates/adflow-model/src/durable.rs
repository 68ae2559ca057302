//! Durable replacement of a small state file (progress records, outbox state, queues).
//!
//! [`replace_file`] writes the new content to `PATH.tmp`, fsyncs it, renames it over `PATH` and
//! fsyncs the directory, so after a crash at any point `PATH` holds either its old content or
//! the whole new one, never a mix, and once it returns the new content survives a power loss.

use std::io::Write;
use std::path::Path;

/// Replaces the content of `path` with `bytes` atomically and durably (see the module docs).
/// `before_rename` runs after the new content is synced and before it takes `path`'s place
/// (fault tests inject a failure there); an error from it leaves `path` as it was.
pub fn replace_file_with(
    path: &Path,
    bytes: &[u8],
    before_rename: impl FnOnce() -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    before_rename()?;
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// [`replace_file_with`] without a hook.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_file_with(path, bytes, || Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_content_and_a_failed_hook_leaves_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        replace_file(&p, b"one").unwrap();
        replace_file(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let err = replace_file_with(&p, b"three", || Err(std::io::Error::other("injected")));
        assert!(err.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
    }
}
