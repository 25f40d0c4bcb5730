//! Who a proxy is, by its client certificate, and which identities may
//! join a group.
//!
//! With mTLS on the xDS port, a stream's identity is its certificate's
//! SPIFFE ID (a URI SAN that is a valid SPIFFE ID, see `is_spiffe_id`)
//! or, when it has none, its DNS SANs that are DNS names. A group's
//! `identities` in the config are exact names or patterns with `*`
//! standing for one whole path segment
//! (`spiffe://prod.example/ns/shop/sa/*`); a stream whose identity matches
//! none of its claimed group's patterns is refused. The matching is written
//! here rather than taken from a glob crate because its one rule (`*` is a
//! whole segment, never part of one, never several) is what keeps a
//! pattern from admitting more than it says.
//!
//! The kind of a SAN is part of the identity: a `spiffe://` pattern is
//! matched against SPIFFE IDs (URI SANs) only and any other pattern
//! against DNS SANs only. A CA that signs whatever DNS names it is asked
//! for (`DNS:spiffe://prod/...`) therefore cannot make a SPIFFE ID, and a
//! URI SAN whose text looks like a host name cannot join a DNS group.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;

/// The identity a stream proved with its client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    /// No client certificate: the port has no mTLS (or no TLS).
    Unauthenticated,
    /// The certificate's SPIFFE ID (`spiffe://trust-domain/path`).
    Spiffe(String),
    /// The certificate's DNS SANs (it had no SPIFFE ID).
    Dns(Vec<String>),
}

impl PeerIdentity {
    /// The identity in a certificate (DER): its first URI SAN that is a
    /// valid SPIFFE ID, else its DNS SANs that are DNS names. Other SANs
    /// (a URI that is not a SPIFFE ID, a "DNS name" holding `spiffe://`)
    /// name nobody. A certificate with none left (or that cannot be
    /// parsed, which rustls would already have refused) is an empty DNS
    /// list, which no pattern matches.
    pub(crate) fn from_certificate(der: &[u8]) -> PeerIdentity {
        use x509_parser::extensions::GeneralName;
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return PeerIdentity::Dns(Vec::new());
        };
        let Ok(Some(san)) = cert.subject_alternative_name() else {
            return PeerIdentity::Dns(Vec::new());
        };
        let mut dns = Vec::new();
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) if is_spiffe_id(uri) => {
                    return PeerIdentity::Spiffe((*uri).to_owned());
                }
                GeneralName::DNSName(d) if is_dns_name(d) => dns.push((*d).to_owned()),
                _ => {}
            }
        }
        PeerIdentity::Dns(dns)
    }

    /// Whether a client certificate proved this identity.
    pub(crate) fn is_authenticated(&self) -> bool {
        !matches!(self, PeerIdentity::Unauthenticated)
    }

    /// The names this identity answers to.
    pub(crate) fn names(&self) -> Vec<&str> {
        match self {
            PeerIdentity::Unauthenticated => Vec::new(),
            PeerIdentity::Spiffe(id) => vec![id.as_str()],
            PeerIdentity::Dns(names) => names.iter().map(String::as_str).collect(),
        }
    }

    /// Whether any of `patterns` admits this identity: a SPIFFE ID by a
    /// `spiffe://` pattern, a DNS name by any other.
    pub(crate) fn allowed_by(&self, patterns: &[IdentityPattern]) -> bool {
        let spiffe = matches!(self, PeerIdentity::Spiffe(_));
        self.names().iter().any(|name| {
            patterns
                .iter()
                .any(|p| p.is_spiffe() == spiffe && p.matches(name))
        })
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerIdentity::Unauthenticated => f.write_str("unauthenticated"),
            PeerIdentity::Spiffe(id) => f.write_str(id),
            PeerIdentity::Dns(names) if names.is_empty() => f.write_str("(no SAN)"),
            PeerIdentity::Dns(names) => f.write_str(&names.join(",")),
        }
    }
}

/// Whether `uri` is a SPIFFE ID as the SPIFFE ID specification defines
/// it: `spiffe://`, a trust domain of lowercase letters, digits, `.`, `-`
/// and `_`, then a path of `/`-separated segments of letters, digits,
/// `.`, `-` and `_`, none of them empty, `.` or `..` (so no query,
/// fragment, port or userinfo, and no trailing `/`). The path may be
/// empty (the ID of a trust domain).
pub(crate) fn is_spiffe_id(uri: &str) -> bool {
    const MAX_BYTES: usize = 2048;
    let Some(rest) = uri.strip_prefix("spiffe://") else {
        return false;
    };
    if uri.len() > MAX_BYTES {
        return false;
    }
    let (domain, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    domain_ok
        && path.is_none_or(|path| {
            path.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            })
        })
}

/// Whether a DNS SAN is a DNS name: labels of letters, digits, `-` and
/// `_` separated by single dots, the first label possibly `*`. Anything
/// else (`spiffe://...`, spaces, `/`) in a DNS SAN is not a name a
/// resolver could return, and would only be mistaken for something else.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').enumerate().all(|(i, label)| {
            (i == 0 && label == "*")
                || (!label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        })
}

/// A problem with an identity pattern in the config.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PatternError {
    /// The pattern is empty.
    #[error("an identity pattern cannot be empty")]
    Empty,
    /// `*` is part of a segment (`sa/web-*`) rather than the whole of one.
    #[error("`*` must be a whole path segment (`.../sa/*`), not part of one")]
    PartialWildcard,
    /// `*` stands in the trust domain or host of a SPIFFE ID.
    #[error("`*` may not stand for the trust domain of a SPIFFE ID")]
    WildcardDomain,
    /// Characters a SAN never holds (spaces, control characters).
    #[error("identity patterns hold no spaces or control characters")]
    BadCharacter,
    /// A `spiffe://` pattern that no SPIFFE ID could match.
    #[error(
        "not a SPIFFE ID: a lowercase trust domain, then path segments of letters, digits, \
         `.`, `-` and `_` (none empty, `.` or `..`), with no port, query or fragment"
    )]
    NotSpiffe,
}

/// One entry of `groups.<name>.identities`: an exact SPIFFE ID or DNS
/// name, or one with `*` for whole `/`-separated segments of a SPIFFE
/// path (or whole `.`-separated labels of a DNS name, as in `*.edge.example`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IdentityPattern {
    text: String,
}

impl IdentityPattern {
    /// Checks and keeps a pattern.
    pub(crate) fn parse(text: &str) -> Result<IdentityPattern, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(PatternError::BadCharacter);
        }
        let segments: Vec<&str> = match text.strip_prefix("spiffe://") {
            Some(rest) => {
                let mut parts = rest.split('/');
                if parts.next().is_none_or(|domain| domain.contains('*')) {
                    return Err(PatternError::WildcardDomain);
                }
                // With each `*` standing for one segment, the pattern must
                // be a SPIFFE ID itself, or it matches nothing.
                let segments: Vec<&str> = parts.collect();
                let example = text
                    .split('/')
                    .map(|s| if s == "*" { "x" } else { s })
                    .collect::<Vec<_>>()
                    .join("/");
                if !segments.iter().any(|s| s.contains('*') && *s != "*") && !is_spiffe_id(&example)
                {
                    return Err(PatternError::NotSpiffe);
                }
                segments
            }
            None => text.split('.').collect(),
        };
        if segments.iter().any(|s| s.contains('*') && *s != "*") {
            return Err(PatternError::PartialWildcard);
        }
        Ok(IdentityPattern {
            text: text.to_owned(),
        })
    }

    /// Whether this is a SPIFFE ID pattern (`spiffe://...`), matched
    /// against SPIFFE IDs only; any other is matched against DNS names.
    pub(crate) fn is_spiffe(&self) -> bool {
        self.text.starts_with("spiffe://")
    }

    /// The pattern as written.
    #[cfg(test)]
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `name` matches: segment by segment, `*` standing for
    /// exactly one non-empty segment.
    pub(crate) fn matches(&self, name: &str) -> bool {
        if !self.text.contains('*') {
            return self.text == name;
        }
        let sep = if self.is_spiffe() { '/' } else { '.' };
        let mut pattern = self.text.split(sep);
        let mut candidate = name.split(sep);
        loop {
            match (pattern.next(), candidate.next()) {
                (None, None) => return true,
                (Some("*"), Some(seg)) if !seg.is_empty() => {}
                (Some(p), Some(seg)) if p == seg => {}
                _ => return false,
            }
        }
    }
}

impl fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Which identities may join which group, from the config in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct IdentityPolicy {
    /// The groups that list identities; any other group admits anyone.
    groups: BTreeMap<String, Vec<IdentityPattern>>,
}

impl IdentityPolicy {
    /// A policy where each group of `groups` admits the identities its
    /// patterns match, and every other group anyone.
    pub(crate) fn new(groups: BTreeMap<String, Vec<IdentityPattern>>) -> IdentityPolicy {
        IdentityPolicy {
            groups: groups.into_iter().filter(|(_, p)| !p.is_empty()).collect(),
        }
    }

    /// Whether a stream of `identity` may join `group`. A group that
    /// lists identities admits only those; an unauthenticated stream
    /// (no mTLS on the port) is never one of them.
    pub(crate) fn admits(&self, group: &str, identity: &PeerIdentity) -> bool {
        match self.groups.get(group) {
            Some(patterns) => identity.allowed_by(patterns),
            None => true,
        }
    }
}

/// The `IdentityPolicy` in force, replaced whole when a config is
/// loaded. A new stream reads it when its node arrives; an admitted
/// stream watches it (`IdentityGate::watch`) and is closed when a new
/// policy no longer admits it.
#[derive(Debug)]
pub struct IdentityGate {
    current: watch::Sender<Arc<IdentityPolicy>>,
}

impl Default for IdentityGate {
    fn default() -> Self {
        IdentityGate {
            current: watch::Sender::new(Arc::default()),
        }
    }
}

impl IdentityGate {
    /// A gate admitting everyone until a policy is set.
    pub(crate) fn new() -> Arc<IdentityGate> {
        Arc::default()
    }

    /// Puts `policy` in force: for streams that join from now on, and
    /// for the admitted ones, which check it again.
    pub(crate) fn set(&self, policy: IdentityPolicy) {
        self.current.send_replace(Arc::new(policy));
    }

    /// The policy in force.
    pub(crate) fn policy(&self) -> Arc<IdentityPolicy> {
        self.current.borrow().clone()
    }

    /// A receiver that sees every policy put in force after this call.
    pub(crate) fn watch(&self) -> watch::Receiver<Arc<IdentityPolicy>> {
        self.current.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IdentityPattern {
        IdentityPattern::parse(s).expect("valid pattern")
    }

    #[test]
    fn a_star_is_one_whole_segment() {
        let pat = p("spiffe://prod.example/ns/shop/sa/*");
        assert!(pat.matches("spiffe://prod.example/ns/shop/sa/web"));
        assert!(!pat.matches("spiffe://prod.example/ns/shop/sa/web/extra"));
        assert!(!pat.matches("spiffe://prod.example/ns/shop/sa/"));
        assert!(!pat.matches("spiffe://prod.example/ns/shop/sa"));
        assert!(!pat.matches("spiffe://other.example/ns/shop/sa/web"));
        let dns = p("*.edge.example");
        assert!(dns.matches("a.edge.example"));
        assert!(!dns.matches("a.b.edge.example"));
        assert!(p("spiffe://d/x").matches("spiffe://d/x"));
        assert!(!p("spiffe://d/x").matches("spiffe://d/xy"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert_eq!(IdentityPattern::parse(""), Err(PatternError::Empty));
        assert_eq!(
            IdentityPattern::parse("spiffe://d/sa/web-*"),
            Err(PatternError::PartialWildcard)
        );
        assert_eq!(
            IdentityPattern::parse("spiffe://*/sa/web"),
            Err(PatternError::WildcardDomain)
        );
        assert_eq!(
            IdentityPattern::parse("web*.example"),
            Err(PatternError::PartialWildcard)
        );
        assert_eq!(
            IdentityPattern::parse("a b"),
            Err(PatternError::BadCharacter)
        );
    }

    #[test]
    fn identities_are_allowed_by_any_of_their_names() {
        let pats = [p("spiffe://d/ns/a/sa/*"), p("edge-1.example")];
        assert!(PeerIdentity::Spiffe("spiffe://d/ns/a/sa/x".into()).allowed_by(&pats));
        assert!(!PeerIdentity::Spiffe("spiffe://d/ns/b/sa/x".into()).allowed_by(&pats));
        assert!(PeerIdentity::Dns(vec!["x".into(), "edge-1.example".into()]).allowed_by(&pats));
        assert!(!PeerIdentity::Unauthenticated.allowed_by(&pats));
        assert!(!PeerIdentity::Dns(vec![]).allowed_by(&pats));
    }

    #[test]
    fn spiffe_ids_follow_the_specification() {
        for good in [
            "spiffe://prod.example/ns/shop/sa/web",
            "spiffe://trust_domain-1/a.b/c-d/e_f",
            "spiffe://prod.example",
        ] {
            assert!(is_spiffe_id(good), "{good}");
        }
        for bad in [
            "spiffe://",
            "spiffe:///ns/a",
            "spiffe://Prod.example/ns/a",
            "spiffe://prod.example:8443/ns/a",
            "spiffe://user@prod.example/ns/a",
            "spiffe://prod.example/ns/a?x=1",
            "spiffe://prod.example/ns/a#frag",
            "spiffe://prod.example/ns//a",
            "spiffe://prod.example/ns/a/",
            "spiffe://prod.example/ns/../a",
            "spiffe://prod.example/./a",
            "spiffe://prod.example/ns/a%2Fb",
            "SPIFFE://prod.example/ns/a",
            "https://prod.example/ns/a",
        ] {
            assert!(!is_spiffe_id(bad), "{bad}");
        }
        assert_eq!(
            IdentityPattern::parse("spiffe://prod.example/ns/*/sa/../x"),
            Err(PatternError::NotSpiffe)
        );
        assert!(IdentityPattern::parse("spiffe://prod.example/ns/*/sa/*").is_ok());
    }

    #[test]
    fn a_san_matches_only_patterns_of_its_own_kind() {
        let spiffe = [p("spiffe://test.example/ns/prod/edge/*")];
        let dns = [p("*.edge.example")];
        // A DNS SAN spelling a SPIFFE ID is not one.
        let forged = PeerIdentity::Dns(vec!["spiffe://test.example/ns/prod/edge/edge-1".into()]);
        assert!(!forged.allowed_by(&spiffe));
        // A SPIFFE ID whose last segment looks like a host name is not one.
        let uri = PeerIdentity::Spiffe("spiffe://prod/ns/tenant/sa/a.edge.example".into());
        assert!(!uri.allowed_by(&dns));
        assert!(!PeerIdentity::Spiffe("a.edge.example".into()).allowed_by(&dns));
        assert!(PeerIdentity::Dns(vec!["a.edge.example".into()]).allowed_by(&dns));
    }

    fn certificate(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = sans;
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    fn uri(s: &str) -> rcgen::SanType {
        rcgen::SanType::URI(s.try_into().expect("ia5"))
    }

    fn dns(s: &str) -> rcgen::SanType {
        rcgen::SanType::DnsName(s.try_into().expect("ia5"))
    }

    #[test]
    fn only_valid_sans_of_a_certificate_name_it() {
        let forged = certificate(vec![dns("spiffe://test.example/ns/prod/edge/edge-1")]);
        assert_eq!(
            PeerIdentity::from_certificate(&forged),
            PeerIdentity::Dns(vec![])
        );
        assert_eq!(
            PeerIdentity::from_certificate(&forged).to_string(),
            "(no SAN)"
        );
        let bad_uri = certificate(vec![
            uri("spiffe://prod.example:443/ns/a"),
            dns("edge-1.example"),
        ]);
        assert_eq!(
            PeerIdentity::from_certificate(&bad_uri),
            PeerIdentity::Dns(vec!["edge-1.example".into()])
        );
        let good = certificate(vec![
            uri("https://prod.example/x"),
            uri("spiffe://prod.example/ns/a/sa/b"),
        ]);
        assert_eq!(
            PeerIdentity::from_certificate(&good),
            PeerIdentity::Spiffe("spiffe://prod.example/ns/a/sa/b".into())
        );
    }
}
