//! File stamps: what the configuration and certificate watchers compare
//! to see that a file changed.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What a watcher compares for one file: size, modification time and a
/// digest of the content, or `None` when the file is absent. The digest
/// catches a same-size rewrite within the file system's timestamp
/// granularity, which size and time alone miss.
pub type Stamp = Option<(u64, Option<SystemTime>, u64)>;

/// The stamps of `paths`, read on the blocking pool (file reads must not
/// stall the runtime): what configuration and certificate reload compare.
pub async fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    let paths = paths.to_vec();
    tokio::task::spawn_blocking(move || paths.iter().map(|p| stamp(p)).collect())
        .await
        .unwrap_or_default()
}

/// Files this large are compared by size and time only.
const MAX_DIGESTED: u64 = 4 << 20;

fn stamp(p: &Path) -> Stamp {
    use std::hash::{Hash, Hasher};
    let m = std::fs::metadata(p).ok()?;
    let digest = if m.len() <= MAX_DIGESTED {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::fs::read(p).ok()?.hash(&mut h);
        h.finish()
    } else {
        0
    };
    Some((m.len(), m.modified().ok(), digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_same_size_rewrite_with_the_same_time_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gatehouse.toml");
        std::fs::write(&p, "upstream = \"http://a:1\"").unwrap();
        let first = stamps(std::slice::from_ref(&p)).await;
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::fs::write(&p, "upstream = \"http://b:1\"").unwrap();
        // As if both writes fell in one tick of the timestamp clock.
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let second = stamps(std::slice::from_ref(&p)).await;
        assert_eq!(first[0].unwrap().0, second[0].unwrap().0, "same size");
        assert_eq!(first[0].unwrap().1, second[0].unwrap().1, "same time");
        assert_ne!(first, second);
        assert_eq!(stamps(&[dir.path().join("absent")]).await, vec![None]);
    }
}
