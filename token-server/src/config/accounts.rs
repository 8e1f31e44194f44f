//! `accounts` and `htpasswd_files`: static accounts, each name defined once.

use std::collections::HashMap;
use std::time::Duration;

use super::check::Check;
use super::file::{ConfigFile, S};
use crate::identity::account::{self, Account, Accounts};
use crate::identity::password_cache::PasswordCache;

/// Every account, checked for duplicates where they are defined.
pub(super) fn accounts(
    file: &ConfigFile,
    fingerprint_secret: &[u8],
    cache_ttl: Duration,
    c: &mut Check,
) -> Option<Accounts> {
    let mut list = Vec::new();
    // Where each name was first defined, for the duplicate message.
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut add = |account: Account, key: String, at: &S<String>, c: &mut Check| match seen
        .get(account.name())
    {
        Some(first) => c.fail(
            key,
            at,
            format!("account {:?} is already defined by {first}", account.name()),
        ),
        None => {
            seen.insert(account.name().to_owned(), key);
            list.push(account);
        }
    };
    for (i, a) in file.accounts.iter().enumerate() {
        let key = format!("accounts[{i}]");
        match Account::new(&a.name.value, &a.password_hash.value, a.labels.clone()) {
            Ok(acc) => add(acc, key, &a.name, c),
            Err(e) => c.fail_with(key, &a.name, &e),
        }
    }
    for (i, f) in file.htpasswd_files.iter().enumerate() {
        let key = format!("htpasswd_files[{i}]");
        match account::read_htpasswd(&c.path(&f.value)) {
            Ok(entries) => {
                for (line, acc) in entries {
                    add(acc, format!("{key} ({}, line {line})", f.value), f, c);
                }
            }
            Err(e) => c.fail_with(key, f, &e),
        }
    }
    let cache = PasswordCache::new(cache_ttl, fingerprint_secret);
    match Accounts::new(list, fingerprint_secret, cache) {
        Ok(accounts) => Some(accounts),
        Err(e) => {
            // Where the accounts are defined: the first entry or file.
            match (file.accounts.first(), file.htpasswd_files.first()) {
                (Some(a), _) => c.fail_with("accounts", &a.name, &e),
                (None, Some(f)) => c.fail_with("htpasswd_files", f, &e),
                (None, None) => c.fail_unlocated("accounts", &e),
            }
            None
        }
    }
}
