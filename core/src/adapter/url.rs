//! Broker URLs, read the same way by every adapter.
//!
//! An adapter parses its URL with [`parse`] (the `url` crate; Kafka's host
//! list is read by hand) and its query with [`options`]: every option
//! percent-decoded, one [`UrlOption`] per name, with parsers for the kinds
//! of values options take ([`UrlOption::duration`], [`UrlOption::flag`],
//! [`UrlOption::number`], [`UrlOption::text`], [`UrlOption::choice`]). They
//! all fail with [`Error::InvalidUrl`] naming the option, and an option the
//! adapter does not know is refused the same way ([`UrlOption::unknown`]),
//! never ignored. The URL in these errors has its password and secret
//! options masked ([`redact_url`]), and a bad value of a secret option is
//! not repeated.
//!
//! # Shared options
//!
//! Options whose concept every networked broker has carry the same name and
//! are parsed the same way everywhere:
//!
//! | option | meaning |
//! |---|---|
//! | [`connect_timeout`](CONNECT_TIMEOUT) | longest wait for a connection to be established |
//! | [`client_name`](CLIENT_NAME) (also [`client_id`](CLIENT_ID)) | the name the broker shows for the connection |
//! | [`publish_timeout`](PUBLISH_TIMEOUT) | longest wait for the broker to confirm a publish |
//! | [`unroutable`](UNROUTABLE) | `error` or `drop`: a publish no group can receive fails or is dropped ([`UnroutablePolicy`]) |
//!
//! Durations are written `500ms`, `10s`, `2m`, `1h` or as plain seconds
//! (`30`); zero is refused. [`SharedOptions`] reads them into an adapter's
//! config.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use courier_core::adapter::url::{self, SharedOptions};
//!
//! # fn main() -> courier_core::Result<()> {
//! let address = "nats://localhost:4222?connect_timeout=500ms&client_id=billing%20v2&retries=3";
//! let (mut timeout, mut name, mut retries) = (Duration::from_secs(5), String::new(), 0u32);
//! for option in url::options(address)? {
//!     let shared = SharedOptions {
//!         connect_timeout: Some(&mut timeout),
//!         client_name: Some(&mut name),
//!         publish_timeout: None,
//!         unroutable: None,
//!     };
//!     if shared.apply(&option)? {
//!         continue;
//!     }
//!     match option.key() {
//!         "retries" => retries = option.number(0..=10)?,
//!         _ => return Err(option.unknown(&["retries"])),
//!     }
//! }
//! assert_eq!((timeout, name.as_str(), retries), (Duration::from_millis(500), "billing v2", 3));
//!
//! let err = url::options("nats://h?colour=blue")?[0].unknown(&["retries"]);
//! assert_eq!(
//!     err.to_string(),
//!     "invalid broker URL nats://h?colour=blue: unknown option \"colour\"; known: retries"
//! );
//! # Ok(()) }
//! ```

use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result, is_secret_option, redact_url};
use crate::unroutable::UnroutablePolicy;

/// Longest wait for a connection to be established (a duration).
pub const CONNECT_TIMEOUT: &str = "connect_timeout";
/// The name the broker shows for the connection: AMQP's connection name,
/// NATS's client name, Kafka's `client.id`.
pub const CLIENT_NAME: &str = "client_name";
/// Another name of [`CLIENT_NAME`], accepted everywhere (Kafka's URLs
/// used it first); [`UrlOption::key`] reads it as [`CLIENT_NAME`].
pub const CLIENT_ID: &str = "client_id";
/// Longest wait for the broker to confirm a publish (a duration).
pub const PUBLISH_TIMEOUT: &str = "publish_timeout";
/// What a publish no consumer group can receive does:
/// [`UnroutablePolicy`] by its values `error` and `drop`.
pub const UNROUTABLE: &str = crate::unroutable::URL_OPTION;
/// The shared options, by their names.
pub const SHARED: &[&str] = &[CONNECT_TIMEOUT, CLIENT_NAME, PUBLISH_TIMEOUT, UNROUTABLE];

/// [`Error::InvalidUrl`] for `url`, shown without secrets.
pub fn invalid(url: &str, reason: impl Into<String>) -> Error {
    Error::InvalidUrl {
        url: redact_url(url),
        reason: reason.into(),
    }
}

/// `url` parsed by the `url` crate, its scheme one of `schemes`.
///
/// # Errors
///
/// [`Error::InvalidUrl`] for a malformed URL, a URL without `//` (which has
/// no host part), or another scheme.
pub fn parse(url: &str, schemes: &[&str]) -> Result<::url::Url> {
    let parsed = ::url::Url::parse(url).map_err(|e| invalid(url, e.to_string()))?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(invalid(
            url,
            format!(
                "expected the scheme {}, not {:?}",
                schemes.join(" or "),
                parsed.scheme()
            ),
        ));
    }
    if parsed.cannot_be_a_base() {
        return Err(invalid(url, format!("expected {}://…", parsed.scheme())));
    }
    Ok(parsed)
}

/// `text` (a user name, password, host or path taken from `url`)
/// percent-decoded; `what` names it in the error.
///
/// # Errors
///
/// [`Error::InvalidUrl`] when the decoded bytes are not UTF-8. The text
/// itself is not shown: it may be a password.
pub fn decode(url: &str, what: &str, text: &str) -> Result<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| invalid(url, format!("the {what} is not UTF-8 once percent-decoded")))
}

/// The raw query of `url`: after the first `?`, before any `#`.
fn raw_query(url: &str) -> &str {
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    url.split_once('?').map_or("", |(_, query)| query)
}

/// The options of `url`'s query, in order, names and values decoded
/// (`application/x-www-form-urlencoded`: `%XX` and `+` for a space).
///
/// # Errors
///
/// [`Error::InvalidUrl`] for an option without a name, or one given twice
/// ([`CLIENT_ID`] and [`CLIENT_NAME`] count as one).
pub fn options(url: &str) -> Result<Vec<UrlOption<'_>>> {
    let mut options: Vec<UrlOption<'_>> = Vec::new();
    for (name, value) in ::url::form_urlencoded::parse(raw_query(url).as_bytes()) {
        if name.is_empty() {
            return Err(invalid(url, "an option without a name"));
        }
        let option = UrlOption {
            url,
            name: name.into_owned(),
            value: value.into_owned(),
        };
        if let Some(earlier) = options.iter().find(|o| o.key() == option.key()) {
            return Err(invalid(
                url,
                format!(
                    "option {:?} is given twice (as {:?} and {:?})",
                    option.key(),
                    earlier.name,
                    option.name
                ),
            ));
        }
        options.push(option);
    }
    Ok(options)
}

/// `url` with the options `set` (names and values, encoded here), replacing
/// options of the same [key](UrlOption::key); the other options keep their
/// place and spelling, a fragment is kept. `url` itself when `set` is empty.
///
/// # Examples
///
/// ```
/// use courier_core::adapter::url::set_options;
/// assert_eq!(
///     set_options("kafka://a:1,b:2?client_id=old&partitions=3", &[("client_name", "new app")]),
///     "kafka://a:1,b:2?partitions=3&client_name=new+app"
/// );
/// ```
pub fn set_options(url: &str, set: &[(&str, &str)]) -> String {
    if set.is_empty() {
        return url.to_owned();
    }
    let (url, fragment) = match url.find('#') {
        Some(hash) => url.split_at(hash),
        None => (url, ""),
    };
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let replaced = |raw: &str| {
        let raw_name = raw.split_once('=').map_or(raw, |(name, _)| name);
        let name = ::url::form_urlencoded::parse(raw_name.as_bytes())
            .next()
            .map(|(name, _)| key_of(&name).to_owned())
            .unwrap_or_default();
        set.iter().any(|(new, _)| key_of(new) == name)
    };
    let kept = query
        .split('&')
        .filter(|raw| !raw.is_empty() && !replaced(raw));
    let mut added = ::url::form_urlencoded::Serializer::new(String::new());
    added.extend_pairs(set);
    let query: Vec<String> = kept.map(str::to_owned).chain([added.finish()]).collect();
    format!("{base}?{}{fragment}", query.join("&"))
}

/// A duration as an option value: whole seconds as `10s`, else `1500ms`
/// (rounded down to the millisecond, at least `1ms`).
pub fn format_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis().max(1))
    }
}

/// A duration written `500ms`, `10s`, `2m`, `1h` or as plain seconds;
/// `None` for anything else, zero included.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use courier_core::adapter::url::parse_duration;
/// assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
/// assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
/// assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
/// assert_eq!(parse_duration("0s"), None);
/// assert_eq!(parse_duration("1.5s"), None);
/// ```
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let count: u64 = digits.parse().ok()?;
    let duration = match unit {
        "ms" => Duration::from_millis(count),
        "" | "s" => Duration::from_secs(count),
        "m" => Duration::from_secs(count.checked_mul(60)?),
        "h" => Duration::from_secs(count.checked_mul(3600)?),
        _ => return None,
    };
    (!duration.is_zero()).then_some(duration)
}

/// Where an adapter's config keeps the shared options, so that every
/// adapter reads them alike; `None` for one the adapter has no use for
/// (its value is checked, then unused, so that one URL's options work on
/// every broker).
#[derive(Debug, Default)]
pub struct SharedOptions<'c> {
    /// Set by [`CONNECT_TIMEOUT`].
    pub connect_timeout: Option<&'c mut Duration>,
    /// Set by [`CLIENT_NAME`] (or [`CLIENT_ID`]).
    pub client_name: Option<&'c mut String>,
    /// Set by [`PUBLISH_TIMEOUT`].
    pub publish_timeout: Option<&'c mut Duration>,
    /// Set by [`UNROUTABLE`].
    pub unroutable: Option<&'c mut UnroutablePolicy>,
}

impl SharedOptions<'_> {
    /// Sets the field `option` names when it is a shared option (`true`);
    /// `false` for any other option.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for a malformed value: a duration that
    /// [`parse_duration`] refuses, an empty client name, an
    /// [`UNROUTABLE`] value other than `error` or `drop`.
    pub fn apply(self, option: &UrlOption<'_>) -> Result<bool> {
        fn set<T>(field: Option<&mut T>, value: T) {
            if let Some(field) = field {
                *field = value;
            }
        }
        match option.key() {
            CONNECT_TIMEOUT => set(self.connect_timeout, option.duration()?),
            CLIENT_NAME => set(self.client_name, option.text()?.to_owned()),
            PUBLISH_TIMEOUT => set(self.publish_timeout, option.duration()?),
            UNROUTABLE => set(self.unroutable, option.choice(UnroutablePolicy::CHOICES)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// The name an option is matched by: its own, or [`CLIENT_NAME`] for
/// [`CLIENT_ID`].
fn key_of(name: &str) -> &str {
    if name == CLIENT_ID { CLIENT_NAME } else { name }
}

/// One option of a URL's query, decoded, with parsers for its value that
/// fail with [`Error::InvalidUrl`] naming the option.
#[derive(Clone)]
pub struct UrlOption<'u> {
    url: &'u str,
    name: String,
    value: String,
}

impl fmt::Debug for UrlOption<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = if is_secret_option(&self.name) {
            "***"
        } else {
            &self.value
        };
        f.debug_struct("UrlOption")
            .field("name", &self.name)
            .field("value", &value)
            .finish()
    }
}

impl UrlOption<'_> {
    /// The name as written (decoded).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name to match on: [`CLIENT_ID`] reads as [`CLIENT_NAME`], every
    /// other name as itself.
    pub fn key(&self) -> &str {
        key_of(&self.name)
    }

    /// The value, decoded.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// [`Error::InvalidUrl`]: this option's value is not what was
    /// `expected`. The value is shown unless the option holds a secret.
    pub fn invalid(&self, expected: &str) -> Error {
        let got = if is_secret_option(&self.name) {
            String::new()
        } else {
            format!(", not {:?}", self.value)
        };
        invalid(
            self.url,
            format!("option {}: expected {expected}{got}", self.name),
        )
    }

    /// [`Error::InvalidUrl`]: the adapter does not know this option;
    /// `known` lists the ones it does.
    pub fn unknown(&self, known: &[&str]) -> Error {
        invalid(
            self.url,
            format!(
                "unknown option {:?}; known: {}",
                self.name,
                known.join(", ")
            ),
        )
    }

    /// The value as a duration ([`parse_duration`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for anything else.
    pub fn duration(&self) -> Result<Duration> {
        parse_duration(&self.value)
            .ok_or_else(|| self.invalid("a duration such as 500ms, 10s, 2m or plain seconds"))
    }

    /// The value as `true`/`false` (or `1`/`0`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for anything else.
    pub fn flag(&self) -> Result<bool> {
        match self.value.as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(self.invalid("true or false")),
        }
    }

    /// The value as a whole number within `range`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for anything else.
    pub fn number<T>(&self, range: impl RangeBounds<T>) -> Result<T>
    where
        T: FromStr + PartialOrd + fmt::Display,
    {
        match self.value.parse::<T>() {
            Ok(number) if range.contains(&number) => Ok(number),
            _ => Err(self.invalid(&describe_range(&range))),
        }
    }

    /// The value, which must not be empty.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for an empty value.
    pub fn text(&self) -> Result<&str> {
        if self.value.is_empty() {
            return Err(self.invalid("a value"));
        }
        Ok(&self.value)
    }

    /// The value that `choices` names.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for a value not in `choices`, listing them.
    pub fn choice<T: Copy>(&self, choices: &[(&str, T)]) -> Result<T> {
        choices
            .iter()
            .find(|(name, _)| *name == self.value)
            .map(|&(_, value)| value)
            .ok_or_else(|| {
                let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
                self.invalid(&format!("one of {}", names.join(", ")))
            })
    }
}

fn describe_range<T: fmt::Display>(range: &impl RangeBounds<T>) -> String {
    let low = match range.start_bound() {
        Bound::Included(low) => Some(low.to_string()),
        _ => None,
    };
    let high = match range.end_bound() {
        Bound::Included(high) => Some(high.to_string()),
        _ => None,
    };
    match (low, high) {
        (Some(low), Some(high)) => format!("a whole number from {low} to {high}"),
        (Some(low), None) => format!("a whole number of at least {low}"),
        (None, Some(high)) => format!("a whole number of at most {high}"),
        (None, None) => "a whole number".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(err: Error) -> String {
        match err {
            Error::InvalidUrl { reason, .. } => reason,
            other => panic!("not an invalid URL: {other:?}"),
        }
    }

    #[test]
    fn options_are_decoded_in_order() {
        let options = options("amqp://u:p@h/%2f?a=1&client_name=my%20app+x&b=%C3%A9#frag").unwrap();
        let pairs: Vec<(&str, &str)> = options.iter().map(|o| (o.name(), o.value())).collect();
        assert_eq!(pairs, [("a", "1"), ("client_name", "my app x"), ("b", "é")]);
        assert!(super::options("nats://h").unwrap().is_empty());
        assert!(super::options("nats://h?").unwrap().is_empty());
        assert!(super::options("kafka://a:1,b:2?&x=1&").unwrap().len() == 1);
    }

    #[test]
    fn an_option_given_twice_or_without_name_is_invalid() {
        let err = options("kafka://a:1?client_id=a&client_name=b").unwrap_err();
        assert!(reason(err).contains("\"client_name\" is given twice"));
        let err = options("kafka://a:1?x=1&x=2").unwrap_err();
        assert!(reason(err).contains("\"x\" is given twice"));
        let err = options("kafka://a:1?=2").unwrap_err();
        assert_eq!(reason(err), "an option without a name");
    }

    #[test]
    fn values_parse_or_name_the_option() {
        let all =
            options("x://h?d=2m&f=0&n=70000&t=&c=b&sasl_password=hunter2&p=-1&ms=250ms&plain=7")
                .unwrap();
        let get = |name: &str| all.iter().find(|o| o.name() == name).unwrap();
        assert_eq!(get("d").duration().unwrap(), Duration::from_secs(120));
        assert_eq!(get("ms").duration().unwrap(), Duration::from_millis(250));
        assert_eq!(get("plain").duration().unwrap(), Duration::from_secs(7));
        assert!(!get("f").flag().unwrap());
        assert_eq!(get("n").number::<u32>(1..).unwrap(), 70_000);
        assert_eq!(get("c").choice(&[("a", 1), ("b", 2)]).unwrap(), 2);
        assert_eq!(
            reason(get("n").number::<u16>(1..).unwrap_err()),
            "option n: expected a whole number of at least 1, not \"70000\""
        );
        assert_eq!(
            reason(get("p").number::<i32>(1..=5).unwrap_err()),
            "option p: expected a whole number from 1 to 5, not \"-1\""
        );
        assert_eq!(
            reason(get("t").text().unwrap_err()),
            "option t: expected a value, not \"\""
        );
        assert_eq!(
            reason(get("c").choice(&[("x", 1), ("y", 2)]).unwrap_err()),
            "option c: expected one of x, y, not \"b\""
        );
        assert_eq!(
            reason(get("d").flag().unwrap_err()),
            "option d: expected true or false, not \"2m\""
        );
        // A secret's value is never repeated.
        let secret = get("sasl_password");
        let err = secret.duration().unwrap_err();
        let shown = format!("{err} {err:?} {secret:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("sasl_password"), "{shown}");
    }

    #[test]
    fn shared_options_fill_their_fields_or_are_only_checked() {
        let all = options(
            "x://h?client_id=a%20b&publish_timeout=2m&unroutable=drop&connect_timeout=x&other=1\
             &unroutable=keep",
        );
        assert!(all.is_err(), "given twice");
        let all = options(
            "x://h?client_id=a%20b&publish_timeout=2m&unroutable=drop&connect_timeout=x&other=1",
        )
        .unwrap();
        let (mut connect, mut name, mut publish) = (Duration::ZERO, String::new(), Duration::ZERO);
        let mut unroutable = UnroutablePolicy::Error;
        for option in &all[..3] {
            let shared = SharedOptions {
                connect_timeout: Some(&mut connect),
                client_name: Some(&mut name),
                publish_timeout: Some(&mut publish),
                unroutable: Some(&mut unroutable),
            };
            assert!(shared.apply(option).unwrap(), "{option:?}");
        }
        assert_eq!((name.as_str(), publish), ("a b", Duration::from_secs(120)));
        assert_eq!(unroutable, UnroutablePolicy::Drop);
        assert_eq!(connect, Duration::ZERO);
        let keep = options("x://h?unroutable=keep").unwrap();
        let err = SharedOptions::default().apply(&keep[0]).unwrap_err();
        assert_eq!(
            reason(err),
            "option unroutable: expected one of error, drop, not \"keep\""
        );
        // Without a field the value is still checked.
        let err = SharedOptions::default().apply(&all[3]).unwrap_err();
        assert!(reason(err).starts_with("option connect_timeout: expected a duration"));
        assert!(!SharedOptions::default().apply(&all[4]).unwrap());
    }

    #[test]
    fn durations_take_units_or_plain_seconds() {
        for (text, expected) in [
            ("1ms", Some(Duration::from_millis(1))),
            ("10s", Some(Duration::from_secs(10))),
            ("10", Some(Duration::from_secs(10))),
            ("2m", Some(Duration::from_secs(120))),
            ("1h", Some(Duration::from_secs(3600))),
            ("0", None),
            ("0ms", None),
            ("", None),
            ("s", None),
            ("-1s", None),
            ("10 s", None),
            ("10S", None),
            ("1.5s", None),
            ("99999999999999999999", None),
            ("18446744073709551615m", None),
        ] {
            assert_eq!(parse_duration(text), expected, "{text:?}");
        }
        for duration in [
            Duration::from_secs(30),
            Duration::from_millis(1500),
            Duration::from_millis(1),
        ] {
            assert_eq!(parse_duration(&format_duration(duration)), Some(duration));
        }
        assert_eq!(format_duration(Duration::from_micros(10)), "1ms");
    }

    #[test]
    fn setting_options_replaces_the_same_key_and_keeps_the_rest() {
        assert_eq!(set_options("nats://h", &[]), "nats://h");
        assert_eq!(
            set_options("nats://h", &[("connect_timeout", "5s")]),
            "nats://h?connect_timeout=5s"
        );
        assert_eq!(
            set_options(
                "amqp://u:p@h/%2f?heartbeat=5&connect_timeout=1s&client_id=x#f",
                &[("connect_timeout", "2s"), ("client_name", "a&b")]
            ),
            "amqp://u:p@h/%2f?heartbeat=5&connect_timeout=2s&client_name=a%26b#f"
        );
        let set = set_options("kafka://a:1?client_id=x", &[("client_name", "é y")]);
        let options = options(&set).unwrap();
        assert_eq!(options.len(), 1);
        assert_eq!(
            (options[0].key(), options[0].value()),
            ("client_name", "é y")
        );
    }

    #[test]
    fn urls_parse_with_their_schemes_only() {
        assert_eq!(parse("nats://h:1", &["nats"]).unwrap().port(), Some(1));
        for url in ["amqp://h", "nats:h", "not a url", "nats://h:notaport"] {
            let err = parse(url, &["nats", "tls"]).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err:?}");
        }
        let err = parse("nats:h", &["nats"]).unwrap_err();
        assert_eq!(reason(err), "expected nats://…");
    }

    #[test]
    fn decoding_refuses_what_is_not_utf8_without_showing_it() {
        assert_eq!(decode("x://h", "password", "p%40ss+").unwrap(), "p@ss+");
        let err = decode("x://u:%ff@h", "password", "%ff").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid broker URL x://u:***@h: the password is not UTF-8 once percent-decoded"
        );
    }
}
