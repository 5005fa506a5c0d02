//! Message headers: string names to string values.
//!
//! Names starting with [`RESERVED_PREFIX`] belong to courier (correlation and
//! causation ids, dead-letter details, wire fields). Inserting such a name
//! through [`Headers::insert`] is an error rather than a silent overwrite.
//! Received from a foreign producer (not courier), such names are not
//! trusted: adapters leave them out
//! ([`adapter::origin`](crate::adapter::origin)).
//!
//! Limits that hold on every broker: a name is 1 to [`MAX_NAME_LEN`] visible
//! ASCII characters other than `:`; a value is any UTF-8 without `\r` or `\n`
//! (NATS headers are line-based), and may be empty; all names and values
//! together take at most [`MAX_TOTAL_LEN`] bytes.
//!
//! Headers are shared between clones until one of them is changed (copy on
//! write), so cloning a message (for a handler, a retry, each group of a
//! topic) copies no header.

use std::borrow::Cow;
use std::collections::{BTreeMap, btree_map};
use std::fmt;
use std::sync::Arc;

/// Prefix of header names reserved for courier itself.
pub const RESERVED_PREFIX: &str = "courier-";
/// Longest header name, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Largest total size of all header names and values, in bytes.
pub const MAX_TOTAL_LEN: usize = 64 * 1024;

/// courier's own header names, kept without a copy when inserted. A
/// reserved name not listed here still works; it is only copied.
const RESERVED: [&str; 21] = [
    "courier-correlation-id",
    "courier-causation-id",
    "courier-request-id",
    "courier-reply-to",
    "courier-deadline-ms",
    "courier-reply-status",
    "courier-error-kind",
    "courier-error-reason",
    "courier-id",
    "courier-key",
    "courier-content-type",
    "courier-timestamp-ms",
    "courier-dlq-reason",
    "courier-dlq-original-topic",
    "courier-dlq-group",
    "courier-dlq-attempts",
    "courier-dlq-first-failure-ms",
    "courier-dlq-last-failure-ms",
    "courier-prior-deliveries",
    "traceparent",
    "tracestate",
];

/// Why a header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The name is empty, too long, or contains a character other than
    /// visible ASCII without `:`.
    #[error("invalid header name {0:?}: names are 1 to 256 visible ASCII characters without ':'")]
    InvalidName(String),
    /// The name starts with the reserved prefix `courier-`.
    #[error("header name {0:?} uses the reserved prefix \"courier-\"")]
    Reserved(String),
    /// The value contains a carriage return or a line feed.
    #[error("value of header {0:?} contains a line break")]
    InvalidValue(String),
    /// All headers together would exceed [`MAX_TOTAL_LEN`].
    #[error("headers would take {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Size the headers would have.
        size: usize,
        /// The limit, [`MAX_TOTAL_LEN`].
        limit: usize,
    },
    /// A header arrived from a broker with a value that is not UTF-8.
    #[error("value of header {0:?} is not UTF-8")]
    NotUtf8(String),
}

/// 1 to [`MAX_NAME_LEN`] visible ASCII characters other than `:`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// Whether `text` holds a CR or LF: looked for with `memchr2` (vector
/// instructions), a fraction of a multi-char pattern's or a byte loop's
/// cost, on every header value of every message.
pub(crate) fn has_line_break(text: &str) -> bool {
    memchr::memchr2(b'\r', b'\n', text.as_bytes()).is_some()
}

/// `size` if headers of that total size are within [`MAX_TOTAL_LEN`].
fn within_limit(size: usize) -> Result<usize, HeaderError> {
    if size > MAX_TOTAL_LEN {
        return Err(HeaderError::TooLarge {
            size,
            limit: MAX_TOTAL_LEN,
        });
    }
    Ok(size)
}

/// One header: its name (courier's own names not copied) and value.
type Entry = (Cow<'static, str>, String);

/// Most headers a message keeps as a sorted list; beyond, a tree.
const LIST_MAX: usize = 32;

/// The headers of a message, sorted by name, without duplicates: a list
/// while they are few (one allocation, found by binary search, freed at
/// once: what a message carries), a tree beyond [`LIST_MAX`], so that a
/// message with thousands of tiny headers, which a producer can send
/// within [`MAX_TOTAL_LEN`], costs O(n log n) to receive, not the O(n²)
/// of inserting into the middle of a list.
#[derive(Clone)]
enum Entries {
    List(Vec<Entry>),
    Tree(BTreeMap<Cow<'static, str>, String>),
}

/// Where `name` is in a sorted list (`Ok`), or where it would go (`Err`).
fn find(list: &[Entry], name: &str) -> Result<usize, usize> {
    list.binary_search_by(|(k, _)| k.as_ref().cmp(name))
}

impl Entries {
    fn get(&self, name: &str) -> Option<&str> {
        match self {
            Entries::List(list) => {
                let at = find(list, name).ok()?;
                Some(list[at].1.as_str())
            }
            Entries::Tree(tree) => tree.get(name).map(String::as_str),
        }
    }

    /// Inserts or replaces `name`, found once, when the headers' total
    /// size `size` stays within [`MAX_TOTAL_LEN`]; returns the new total.
    fn insert(
        &mut self,
        name: Cow<'static, str>,
        value: String,
        size: usize,
    ) -> Result<usize, HeaderError> {
        let added = name.len() + value.len();
        match self {
            Entries::List(list) => match find(list, &name) {
                Ok(at) => {
                    let old = name.len() + list[at].1.len();
                    let size = within_limit(size - old + added)?;
                    list[at].1 = value;
                    Ok(size)
                }
                Err(at) => {
                    let size = within_limit(size + added)?;
                    if list.len() < LIST_MAX {
                        list.insert(at, (name, value));
                    } else {
                        let mut tree: BTreeMap<_, _> = list.drain(..).collect();
                        tree.insert(name, value);
                        *self = Entries::Tree(tree);
                    }
                    Ok(size)
                }
            },
            Entries::Tree(tree) => match tree.entry(name) {
                btree_map::Entry::Occupied(mut entry) => {
                    let old = entry.key().len() + entry.get().len();
                    let size = within_limit(size - old + added)?;
                    entry.insert(value);
                    Ok(size)
                }
                btree_map::Entry::Vacant(entry) => {
                    let size = within_limit(size + added)?;
                    entry.insert(value);
                    Ok(size)
                }
            },
        }
    }

    fn remove(&mut self, name: &str) -> Option<String> {
        match self {
            Entries::List(list) => {
                let at = find(list, name).ok()?;
                Some(list.remove(at).1)
            }
            Entries::Tree(tree) => tree.remove(name),
        }
    }

    fn len(&self) -> usize {
        match self {
            Entries::List(list) => list.len(),
            Entries::Tree(tree) => tree.len(),
        }
    }

    /// In name order, whichever the form.
    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let (list, tree) = match self {
            Entries::List(list) => (Some(list.iter().map(|(k, v)| (k, v))), None),
            Entries::Tree(tree) => (None, Some(tree.iter())),
        };
        list.into_iter()
            .flatten()
            .chain(tree.into_iter().flatten())
            .map(|(k, v)| (k.as_ref(), v.as_str()))
    }
}

/// Equal when they hold the same headers, whichever the form.
impl PartialEq for Entries {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Entries {}

/// An ordered map of header names to values with courier's limits enforced.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// `None` when empty (so equal headers compare equal), shared by
    /// clones. courier's own names are kept as `'static` strings
    /// ([`RESERVED`]): most messages carry one or two, and a name that is
    /// not copied is one allocation less on every publish and receive.
    map: Option<Arc<Entries>>,
    size: usize,
}

impl Headers {
    /// Empty headers (no allocation).
    pub const fn new() -> Self {
        Headers { map: None, size: 0 }
    }

    /// Inserts a user header, replacing an earlier value of the same name.
    ///
    /// # Errors
    ///
    /// [`HeaderError`] if the name is invalid or reserved, the value has a
    /// line break, or the headers would grow past [`MAX_TOTAL_LEN`].
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), HeaderError> {
        let name = name.into();
        if name.starts_with(RESERVED_PREFIX) {
            return Err(HeaderError::Reserved(name));
        }
        self.insert_checked(Cow::Owned(name), value.into())
    }

    /// Inserts a header whose name may use the reserved prefix: adapters
    /// restoring wire headers (through
    /// [`adapter::restore_header`](crate::adapter::restore_header)), the
    /// runtime adding dead-letter details.
    ///
    /// # Errors
    ///
    /// As [`Headers::insert`], except that reserved names are accepted.
    pub(crate) fn insert_reserved(
        &mut self,
        name: impl AsRef<str> + Into<String>,
        value: impl Into<String>,
    ) -> Result<(), HeaderError> {
        let name = match RESERVED.iter().find(|known| **known == name.as_ref()) {
            Some(known) => Cow::Borrowed(*known),
            None => Cow::Owned(name.into()),
        };
        self.insert_checked(name, value.into())
    }

    /// Inserts one of courier's own headers by its constant name, without
    /// the lookup among the reserved names and the name check that
    /// [`Headers::insert_reserved`] makes for a name read from the wire
    /// (every reply and every message a handler sends on gets two headers
    /// this way).
    ///
    /// # Errors
    ///
    /// As [`Headers::insert`], for the value.
    pub(crate) fn insert_own(
        &mut self,
        name: &'static str,
        value: impl Into<String>,
    ) -> Result<(), HeaderError> {
        debug_assert!(RESERVED.contains(&name), "{name} is not listed");
        self.insert_checked(Cow::Borrowed(name), value.into())
    }

    /// Whether one header, on its own, is within the rules: a valid name
    /// (any prefix) and value, and together no larger than
    /// [`MAX_TOTAL_LEN`]. Borrows only: an adapter judging a received
    /// header before it keeps it allocates nothing for a header it keeps
    /// ([`adapter::origin::carriable`](crate::adapter::origin::carriable)).
    pub(crate) fn check(name: &str, value: &str) -> Result<(), HeaderError> {
        if !valid_name(name) {
            return Err(HeaderError::InvalidName(name.to_owned()));
        }
        if has_line_break(value) {
            return Err(HeaderError::InvalidValue(name.to_owned()));
        }
        within_limit(name.len() + value.len()).map(drop)
    }

    fn insert_checked(
        &mut self,
        name: Cow<'static, str>,
        value: String,
    ) -> Result<(), HeaderError> {
        // courier's own names are known to be valid.
        let known = matches!(name, Cow::Borrowed(_));
        if !known && !valid_name(&name) {
            return Err(HeaderError::InvalidName(name.into_owned()));
        }
        if has_line_break(&value) {
            return Err(HeaderError::InvalidValue(name.into_owned()));
        }
        // One lookup finds the slot, judges the size against what it
        // replaces, and fills it.
        match self.map.as_mut() {
            Some(map) => self.size = Arc::make_mut(map).insert(name, value, self.size)?,
            None => {
                self.size = within_limit(name.len() + value.len())?;
                let mut list = Vec::with_capacity(4);
                list.push((name, value));
                self.map = Some(Arc::new(Entries::List(list)));
            }
        }
        Ok(())
    }

    /// The value of a header.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.as_deref()?.get(name)
    }

    /// Removes a header and returns its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let map = self.map.as_mut()?;
        // Shared headers are copied only when the name is there to remove.
        if Arc::get_mut(map).is_none() {
            map.get(name)?;
        }
        let map = Arc::make_mut(map);
        let value = map.remove(name)?;
        if map.len() == 0 {
            self.map = None;
        }
        self.size -= name.len() + value.len();
        Some(value)
    }

    /// Removes every header named in `names`, in one pass over the
    /// headers: what a requester does to each reply (four names, most of
    /// them absent, where four removes would search four times).
    pub(crate) fn remove_all(&mut self, names: &[&str]) {
        let Some(map) = self.map.as_mut() else {
            return;
        };
        // Shared headers are copied only when a name is there to remove.
        if !map.iter().any(|(name, _)| names.contains(&name)) {
            return;
        }
        let size = &mut self.size;
        let mut keep = |name: &str, value: &str| {
            let drop = names.contains(&name);
            if drop {
                *size -= name.len() + value.len();
            }
            !drop
        };
        let entries = Arc::make_mut(map);
        match entries {
            Entries::List(list) => list.retain(|(name, value)| keep(name, value)),
            Entries::Tree(tree) => tree.retain(|name, value| keep(name, value)),
        }
        if entries.len() == 0 {
            self.map = None;
        }
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.map.as_deref().map_or(0, Entries::len)
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.map.is_none()
    }

    /// Total bytes of all names and values.
    pub fn byte_size(&self) -> usize {
        self.size
    }

    /// All headers, in name order, reserved ones included.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().flat_map(|map| map.iter())
    }

    /// The headers an application set, without courier's reserved ones.
    pub fn user(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter().filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a str);
    type IntoIter = Box<dyn Iterator<Item = (&'a str, &'a str)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_until_one_is_changed() {
        let mut original = Headers::new();
        original.insert("tenant", "acme").unwrap();
        let mut copy = original.clone();
        copy.insert("tenant", "globex").unwrap();
        assert_eq!(original.get("tenant"), Some("acme"));
        assert_eq!(copy.get("tenant"), Some("globex"));
        assert_eq!(copy.remove("tenant").as_deref(), Some("globex"));
        assert_eq!(copy, Headers::new());
        assert_eq!((copy.len(), copy.byte_size()), (0, 0));
        assert_eq!(original.len(), 1);
        assert_eq!(original.remove("absent"), None);
    }

    #[test]
    fn courier_names_are_kept_without_a_copy() {
        use crate::adapter::wire;
        use crate::delivery::{
            DLQ_ATTEMPTS, DLQ_FIRST_FAILURE, DLQ_GROUP, DLQ_LAST_FAILURE, DLQ_ORIGINAL_TOPIC,
            DLQ_REASON,
        };
        use crate::message::{CAUSATION_ID, CORRELATION_ID};
        use crate::request::headers::{
            DEADLINE, ERROR_KIND, ERROR_REASON, REPLY_STATUS, REPLY_TO, REQUEST_ID,
        };
        use crate::telemetry::{TRACEPARENT, TRACESTATE};
        let names = [
            CORRELATION_ID,
            CAUSATION_ID,
            REQUEST_ID,
            REPLY_TO,
            DEADLINE,
            REPLY_STATUS,
            ERROR_KIND,
            ERROR_REASON,
            wire::ID,
            wire::KEY,
            wire::CONTENT_TYPE,
            wire::TIMESTAMP,
            DLQ_REASON,
            DLQ_ORIGINAL_TOPIC,
            DLQ_GROUP,
            DLQ_ATTEMPTS,
            DLQ_FIRST_FAILURE,
            DLQ_LAST_FAILURE,
            TRACEPARENT,
            TRACESTATE,
        ];
        let mut headers = Headers::new();
        for name in names {
            // Given as an owned copy, as an adapter reading a wire header.
            headers.insert_reserved(name.to_owned(), "v").unwrap();
        }
        headers.insert_reserved("courier-unlisted", "v").unwrap();
        let Some(Entries::List(map)) = headers.map.as_deref() else {
            panic!("a list");
        };
        for (name, _) in map {
            let kept = matches!(name, Cow::Borrowed(_));
            assert_eq!(kept, name != "courier-unlisted", "{name}");
        }
        assert_eq!(map.len(), names.len() + 1);
        assert_eq!(headers.get(CORRELATION_ID), Some("v"));
    }

    #[test]
    fn reserved_names_are_refused() {
        let mut h = Headers::new();
        assert_eq!(
            h.insert("courier-correlation-id", "x"),
            Err(HeaderError::Reserved("courier-correlation-id".into()))
        );
        assert!(h.is_empty());
    }

    #[test]
    fn invalid_names_and_values_are_refused() {
        let mut h = Headers::new();
        for name in ["", "a b", "a:b", "é", &"n".repeat(257)] {
            assert!(
                matches!(h.insert(name, "v"), Err(HeaderError::InvalidName(_))),
                "{name:?}"
            );
        }
        assert_eq!(
            h.insert("a", "x\ny"),
            Err(HeaderError::InvalidValue("a".into()))
        );
        assert!(h.is_empty());
    }

    #[test]
    fn headers_are_kept_in_name_order_whatever_the_order_of_inserts() {
        let mut h = Headers::new();
        for (name, value) in [("m", "1"), ("z", "2"), ("a", "3"), ("q", "4"), ("b", "5")] {
            h.insert(name, value).unwrap();
        }
        h.insert("q", "replaced").unwrap();
        assert_eq!(h.remove("m").as_deref(), Some("1"));
        assert_eq!(h.remove("m"), None);
        assert_eq!(h.get("c"), None);
        let all: Vec<(&str, &str)> = h.iter().collect();
        assert_eq!(all, [("a", "3"), ("b", "5"), ("q", "replaced"), ("z", "2")]);
        assert_eq!(h.byte_size(), 1 + 1 + 1 + 1 + 1 + 8 + 1 + 1);
        let mut same = Headers::new();
        for (name, value) in all.iter().rev() {
            same.insert(*name, *value).unwrap();
        }
        assert_eq!(same, h);
        for name in ["a", "b", "q", "z"] {
            h.remove(name).unwrap();
        }
        assert!(h.is_empty());
        assert_eq!((h.len(), h.byte_size()), (0, 0));
        assert_eq!(h, Headers::new());
    }

    #[test]
    fn many_headers_move_to_a_tree_and_stay_in_order_and_equal() {
        let names: Vec<String> = (0..1_000).map(|i| format!("h{i:04}")).collect();
        let mut many = Headers::new();
        // In reverse: every insert goes before all the others.
        for name in names.iter().rev() {
            many.insert(name.as_str(), "v").unwrap();
        }
        assert!(matches!(many.map.as_deref(), Some(Entries::Tree(_))));
        assert_eq!(many.len(), 1_000);
        assert_eq!(many.byte_size(), 1_000 * 6);
        let order: Vec<&str> = many.iter().map(|(k, _)| k).collect();
        assert_eq!(order, names.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(many.get("h0500"), Some("v"));
        many.insert("h0500", "changed").unwrap();
        assert_eq!(many.get("h0500"), Some("changed"));
        assert_eq!(many.byte_size(), 1_000 * 6 + 6);
        many.insert("h0500", "v").unwrap();

        // The same headers kept as a list compare equal to the tree.
        for name in &names[LIST_MAX..] {
            assert_eq!(many.remove(name).as_deref(), Some("v"));
        }
        let mut few = Headers::new();
        for name in &names[..LIST_MAX] {
            few.insert(name.as_str(), "v").unwrap();
        }
        assert!(matches!(few.map.as_deref(), Some(Entries::List(_))));
        assert!(matches!(many.map.as_deref(), Some(Entries::Tree(_))));
        assert_eq!(few, many);
        few.insert("h0000", "other").unwrap();
        assert_ne!(few, many);
        few.insert("h0000", "v").unwrap();
        assert_eq!(few.byte_size(), many.byte_size());
        for name in &names[..LIST_MAX] {
            many.remove(name).unwrap();
        }
        assert_eq!(many, Headers::new());
    }

    #[test]
    fn one_header_is_judged_as_inserting_it_would_be() {
        let long = "n".repeat(257);
        let too_large = "x".repeat(MAX_TOTAL_LEN);
        let cases: [(&str, &str); 10] = [
            ("tenant", "acme"),
            ("courier-correlation-id", "flow"),
            ("empty", ""),
            ("greeting", "héllo wörld ✓"),
            ("", "v"),
            ("a b", "v"),
            ("é", "v"),
            (&long, "v"),
            ("a", "x\ny"),
            ("a", &too_large),
        ];
        for (name, value) in cases {
            let inserted = Headers::new().insert_reserved(name, value);
            assert_eq!(Headers::check(name, value), inserted, "{name:?}: {value:?}");
        }
        assert!(Headers::check("a", &too_large[1..]).is_ok());
    }

    #[test]
    fn remove_all_removes_exactly_the_names_given_as_a_list_or_a_tree() {
        for count in [3, LIST_MAX + 8] {
            let mut h = Headers::new();
            for i in 0..count {
                h.insert(format!("h{i:02}"), format!("value {i}")).unwrap();
            }
            let shared = h.clone();
            let expected_size =
                h.byte_size() - ("h00".len() + "value 0".len()) - ("h02".len() + "value 2".len());
            h.remove_all(&["h02", "absent", "h00"]);
            assert_eq!(h.len(), count - 2, "{count} headers");
            assert_eq!(h.byte_size(), expected_size, "{count} headers");
            assert_eq!((h.get("h00"), h.get("h02")), (None, None));
            assert_eq!(h.get("h01"), Some("value 1"));
            // The clone is untouched (copy on write).
            assert_eq!(shared.len(), count);
            assert_eq!(shared.get("h00"), Some("value 0"));
            // Nothing to remove: nothing changes.
            let before = h.clone();
            h.remove_all(&["absent", "h00"]);
            assert!(h == before, "{count} headers");
            // Everything removed: as empty as new headers.
            let names: Vec<String> = h.iter().map(|(name, _)| name.to_owned()).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            h.remove_all(&names);
            assert_eq!(h, Headers::new(), "{count} headers");
            assert_eq!((h.len(), h.byte_size()), (0, 0));
        }
    }

    #[test]
    fn a_refused_insert_changes_nothing_as_a_list_or_a_tree() {
        for count in [1, LIST_MAX + 8] {
            let mut h = Headers::new();
            for i in 0..count {
                h.insert(format!("h{i:02}"), "v").unwrap();
            }
            let room = MAX_TOTAL_LEN - h.byte_size();
            h.insert("h00", "v".repeat(room + 1)).unwrap();
            assert_eq!(h.byte_size(), MAX_TOTAL_LEN, "{count} headers");
            let before = h.clone();
            // Replacing with one byte more than the limit, or adding a name.
            let err = h.insert("h00", "v".repeat(room + 2)).unwrap_err();
            assert_eq!(
                err,
                HeaderError::TooLarge {
                    size: MAX_TOTAL_LEN + 1,
                    limit: MAX_TOTAL_LEN
                },
                "{count} headers"
            );
            assert!(h.insert("new", "").is_err(), "{count} headers");
            // Not `assert_eq!`: a failure would print 64 KiB of headers.
            assert!(h == before, "{count} headers: changed by a refused insert");
            assert_eq!(h.byte_size(), MAX_TOTAL_LEN, "{count} headers");
            assert_eq!(h.get("new"), None);
            // Replacing with a value of the same size fits exactly.
            h.insert("h00", "w".repeat(room + 1)).unwrap();
            assert_eq!(h.byte_size(), MAX_TOTAL_LEN, "{count} headers");
            assert_eq!(h.len(), count, "{count} headers");
        }
    }

    #[test]
    fn unicode_and_empty_values_are_kept() {
        let mut h = Headers::new();
        h.insert("greeting", "héllo wörld ✓").unwrap();
        h.insert("empty", "").unwrap();
        assert_eq!(h.get("greeting"), Some("héllo wörld ✓"));
        assert_eq!(h.get("empty"), Some(""));
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn total_size_is_bounded_and_tracked_on_replace() {
        let mut h = Headers::new();
        h.insert("big", "x".repeat(MAX_TOTAL_LEN - 3)).unwrap();
        assert_eq!(h.byte_size(), MAX_TOTAL_LEN);
        let err = h.insert("b", "y").unwrap_err();
        assert_eq!(
            err,
            HeaderError::TooLarge {
                size: MAX_TOTAL_LEN + 2,
                limit: MAX_TOTAL_LEN
            }
        );
        h.insert("big", "small").unwrap();
        assert_eq!(h.byte_size(), 8);
        assert_eq!(h.remove("big").as_deref(), Some("small"));
        assert_eq!(h.byte_size(), 0);
    }
}
