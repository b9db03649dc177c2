//! `keygate keygen`: a new key, its hash and a TOML snippet; with
//! `--add-to`, the hash is added to a client in a config file in place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{value, Array, DocumentMut, InlineTable, Item, Value};

use super::{OK, RUNTIME, USAGE};
use crate::keys;

/// Key formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A random UUIDv4.
    Uuid,
    /// `kg_` + 43 random base62 characters + a checksum: recognisable by secret scanners.
    Token,
}

/// Arguments of `keygate keygen`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The client the key is for (used in the snippet and by --add-to).
    #[arg(long)]
    pub client: Option<String>,
    /// Key format.
    #[arg(long, value_enum, default_value = "uuid")]
    pub format: Format,
    /// Add the new key's hash to this client in FILE, keeping comments and layout.
    #[arg(long, value_name = "FILE", requires = "client")]
    pub add_to: Option<PathBuf>,
    /// With --add-to: make the client's older keys expire after this long (e.g. 7d).
    #[arg(long, value_name = "DURATION", requires = "add_to")]
    pub retire_after: Option<String>,
    /// A name for the key in logs, metrics and the credential header (e.g. 2026-12).
    #[arg(long)]
    pub name: Option<String>,
}

/// Generate, print, and optionally add to a file.
pub fn run(args: Args) -> u8 {
    if let Some(id) = &args.client {
        if !keys::valid_client_id(id) {
            eprintln!("error: --client \"{id}\": use letters, digits, '-', '_' and '.'");
            return USAGE;
        }
    }
    if let Some(name) = args.name.as_deref().filter(|n| !keys::valid_key_name(n)) {
        eprintln!("error: --name \"{name}\": use 1–64 letters, digits, '-', '_' and '.'");
        return USAGE;
    }
    let key = match args.format {
        Format::Uuid => keys::new_uuid(),
        Format::Token => match keys::new_token() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: no randomness from the OS: {e}");
                return RUNTIME;
            }
        },
    };
    let hash = keys::format_hash(&keys::digest(key.as_bytes()));
    let client = args.client.as_deref().unwrap_or("my-client");
    // The one place a plain key is ever printed: to its owner, once.
    println!("key:  {key}");
    println!("hash: {hash}");
    let name = args.name.as_deref();
    if let Some(name) = name {
        println!("name: {name}");
    }
    if let Some(file) = &args.add_to {
        return add_to(file, client, &hash, name, args.retire_after.as_deref());
    }
    println!();
    println!("# paste into keygate.toml; store the key in your secret manager");
    println!("[clients.{client}]");
    println!("routes = [\"*\"]");
    // One key per line, so `--add-to` and a revoking `sed '/<fingerprint>/d'` keep to one line each.
    let named = name.map(|n| format!(", name = \"{n}\"")).unwrap_or_default();
    println!("keys = [\n  {{ hash = \"{hash}\"{named} }},\n]");
    OK
}

fn add_to(file: &Path, client: &str, hash: &str, name: Option<&str>, retire_after: Option<&str>) -> u8 {
    let retire_at = match retire_after.map(retire_time).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: --retire-after: {e}");
            return USAGE;
        }
    };
    let result = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
        .and_then(|text| edit_retiring(&text, client, hash, name, retire_at.as_deref()))
        .and_then(|(text, retired)| write_atomically(file, &text).map(|()| retired));
    match result {
        Ok(retired) => {
            println!("added to clients.{client} in {}", file.display());
            for (key, at) in retired {
                println!("retiring {key}: expires = \"{at}\"");
            }
            OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            USAGE
        }
    }
}

fn retire_time(s: &str) -> Result<String, String> {
    let d: Duration = crate::config::parse_duration(s)?;
    let now = time::OffsetDateTime::now_utc();
    let at = time::Duration::try_from(d).ok().and_then(|d| now.checked_add(d)).ok_or("is too long")?;
    let at = at.replace_nanosecond(0).unwrap_or(at);
    at.format(&time::format_description::well_known::Rfc3339).map_err(|e| e.to_string())
}

/// Add `hash` to `clients.<client>.keys`; with `retire_at`, older keys that
/// expire later (or never) are set to expire then.
pub fn edit(text: &str, client: &str, hash: &str, retire_at: Option<&str>) -> Result<String, String> {
    edit_named(text, client, hash, None, retire_at)
}

/// [`edit`], with the new key's `name` when given.
pub fn edit_named(
    text: &str,
    client: &str,
    hash: &str,
    name: Option<&str>,
    retire_at: Option<&str>,
) -> Result<String, String> {
    edit_retiring(text, client, hash, name, retire_at).map(|(text, _)| text)
}

/// [`edit_named`], also saying which older keys were given which `expires`
/// (each by its name, or its hash's first 12 hex digits, or its variable).
pub fn edit_retiring(
    text: &str,
    client: &str,
    hash: &str,
    name: Option<&str>,
    retire_at: Option<&str>,
) -> Result<(String, Vec<(String, String)>), String> {
    let mut retired = Vec::new();
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
    let table = doc
        .get_mut("clients")
        .and_then(|c| c.get_mut(client))
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| format!("no [clients.{client}] in the file: add the client with its routes first"))?;
    if table.get("keys").is_none() {
        table.insert("keys", value(Array::new()));
    }
    let keys = table
        .get_mut("keys")
        .and_then(Item::as_array_mut)
        .ok_or_else(|| format!("clients.{client}.keys is not an inline array"))?;
    if let Some(at) = retire_at {
        for old in keys.iter_mut().filter_map(Value::as_inline_table_mut) {
            let later = old.get("expires").and_then(Value::as_str).is_none_or(|e| later_than(e, at));
            if later {
                retired.push((describe(old), at.to_string()));
                old.insert("expires", at.into());
                old.fmt();
            }
        }
    }
    let mut entry = InlineTable::new();
    entry.insert("hash", hash.into());
    if let Some(name) = name {
        entry.insert("name", name.into());
    }
    push_on_own_line(keys, entry);
    Ok((doc.to_string(), retired))
}

/// An existing key as the operator knows it; never more of a hash than a
/// fingerprint (and a hash field holding a pasted plain key shows nothing).
fn describe(key: &InlineTable) -> String {
    let text = |field: &str| key.get(field).and_then(Value::as_str).map(str::to_owned);
    if let Some(name) = text("name") {
        return format!("key \"{name}\"");
    }
    if let Some(var) = text("env") {
        return format!("key from ${var}");
    }
    match text("hash").and_then(|h| h.strip_prefix("sha256:").and_then(|hex| hex.get(..12)).map(str::to_owned)) {
        Some(prefix) if prefix.bytes().all(|b| b.is_ascii_hexdigit()) => format!("key sha256:{prefix}…"),
        _ => "a key".into(),
    }
}

/// Append `entry`; in an array written one key per line, on a line of its
/// own, leaving a comment after the last key on that key's line.
fn push_on_own_line(keys: &mut Array, entry: InlineTable) {
    let prefix = |v: &Value| v.decor().prefix().and_then(|p| p.as_str()).map(str::to_owned);
    let Some(last_prefix) = keys.iter().last().and_then(prefix).filter(|p| p.contains('\n')) else {
        keys.push(entry);
        return;
    };
    let indent = last_prefix.rsplit('\n').next().unwrap_or_default().to_owned();
    let trailing = keys.trailing().as_str().unwrap_or_default().to_owned();
    let (rest_of_line, closing_indent) = match trailing.rsplit_once('\n') {
        Some((line, closing)) => (format!("{line}\n"), closing.to_owned()),
        None => (format!("{trailing}\n"), String::new()),
    };
    let mut value = Value::InlineTable(entry);
    value.decor_mut().set_prefix(format!("{rest_of_line}{indent}"));
    value.decor_mut().set_suffix("");
    keys.push_formatted(value);
    keys.set_trailing(format!("\n{closing_indent}"));
    keys.set_trailing_comma(true);
}

fn later_than(existing: &str, at: &str) -> bool {
    match (keys::parse_rfc3339(existing), keys::parse_rfc3339(at)) {
        (Some(e), Some(a)) => e > a,
        _ => true,
    }
}

/// Replace the file's content atomically and keep what it was: through a
/// symlink, the link stays and its target is written; the new file is made
/// in the target's own folder (so the rename stays on one file system) with
/// the old file's mode and owner.
fn write_atomically(file: &Path, text: &str) -> Result<(), String> {
    let target = std::fs::canonicalize(file).map_err(|e| format!("cannot resolve {}: {e}", file.display()))?;
    let meta = std::fs::metadata(&target).map_err(|e| format!("cannot read {}: {e}", target.display()))?;
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = target.with_file_name(format!(".{name}.keygen-tmp"));
    let written = write_like(&tmp, text, &meta)
        .and_then(|()| std::fs::rename(&tmp, &target).map_err(|e| format!("cannot replace {}: {e}", target.display())));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Write `text` to a new file `tmp` with the mode and owner of `like`.
fn write_like(tmp: &Path, text: &str, like: &std::fs::Metadata) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let fail = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", tmp.display());
    // Created private, so the key hashes are never readable by more than the old file allowed.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| fail("create", e))?;
    f.write_all(text.as_bytes()).map_err(|e| fail("write", e))?;
    let created = f.metadata().map_err(|e| fail("read", e))?;
    if (created.uid(), created.gid()) != (like.uid(), like.gid()) {
        // Not allowed (not root, not the owner): fail and leave the file as it was.
        std::os::unix::fs::fchown(&f, Some(like.uid()), Some(like.gid()))
            .map_err(|e| fail(&format!("give owner {}:{} to", like.uid(), like.gid()), e))?;
    }
    f.set_permissions(like.permissions()).map_err(|e| fail("set the mode of", e))?;
    f.sync_all().map_err(|e| fail("sync", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# top comment\n[clients.billing] # inline comment\nroutes = [\"*\"]\nkeys = [\n  { hash = \"sha256:aa\" }, # old\n]\n";

    #[test]
    fn adds_key_and_keeps_comments() {
        let out = edit(FILE, "billing", "sha256:bb", None).unwrap();
        assert!(out.contains("# top comment") && out.contains("# inline comment") && out.contains("# old"));
        assert!(out.contains("sha256:bb"));
    }

    #[test]
    fn retires_older_keys() {
        let out = edit(FILE, "billing", "sha256:bb", Some("2030-01-01T00:00:00Z")).unwrap();
        let doc: DocumentMut = out.parse().unwrap();
        let keys = doc["clients"]["billing"]["keys"].as_array().unwrap();
        let first = keys.get(0).unwrap().as_inline_table().unwrap();
        assert_eq!(first.get("expires").and_then(Value::as_str), Some("2030-01-01T00:00:00Z"));
        let second = keys.get(1).unwrap().as_inline_table().unwrap();
        assert!(second.get("expires").is_none());
    }

    #[test]
    fn retiring_says_which_keys_got_which_expiry() {
        let file = "[clients.billing]\nroutes = [\"*\"]\nkeys = [\n  { hash = \"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\" },\n  { env = \"OLD_KEY\" },\n  { hash = \"sha256:00\", name = \"2026-11\" },\n]\n";
        let at = "2030-01-01T00:00:00Z";
        let (_, retired) = edit_retiring(file, "billing", "sha256:bb", None, Some(at)).unwrap();
        let keys: Vec<&str> = retired.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["key sha256:0123456789ab…", "key from $OLD_KEY", "key \"2026-11\""]);
        assert!(retired.iter().all(|(_, when)| when == at));
    }

    #[test]
    fn a_key_per_line_layout_is_kept() {
        let out = edit(FILE, "billing", "sha256:bb", Some("2030-01-01T00:00:00Z")).unwrap();
        let want = "keys = [\n  { hash = \"sha256:aa\", expires = \"2030-01-01T00:00:00Z\" }, # old\n  { hash = \"sha256:bb\" },\n]\n";
        assert!(out.ends_with(want), "{out}");
    }

    #[test]
    fn a_one_line_array_stays_on_one_line() {
        let file = "[clients.billing]\nroutes = [\"*\"]\nkeys = [{ hash = \"sha256:aa\" }]\n";
        let out = edit(file, "billing", "sha256:bb", None).unwrap();
        assert!(out.ends_with("keys = [{ hash = \"sha256:aa\" }, { hash = \"sha256:bb\" }]\n"), "{out}");
    }

    #[test]
    fn a_named_key_carries_its_name() {
        let out = edit_named(FILE, "billing", "sha256:bb", Some("2026-12"), None).unwrap();
        assert!(out.contains("{ hash = \"sha256:bb\", name = \"2026-12\" },"), "{out}");
    }

    #[test]
    fn unknown_client_is_an_error() {
        assert!(edit(FILE, "orders", "sha256:bb", None).is_err());
    }
}
