//! Link rewriting (pure): absolute URLs that point at an upstream become URLs at the proxy.
//!
//! keystoneauth and openstacksdk take their base URL from the version document's hrefs, and
//! follow `Location`; if those named Glance, clients would silently leave the proxy
//! (glance-cache-spec §1.2). Relative links and links elsewhere are left as they are.

use url::Url;

/// One base URL whose links are rewritten: scheme, host, port and path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Base {
    scheme: String,
    host: String,
    port: Option<u16>,
    /// Path prefix without a trailing slash ("" for the root).
    path: String,
}

impl Base {
    fn new(url: &Url) -> Option<Base> {
        Some(Base {
            scheme: url.scheme().to_string(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default(),
            path: url.path().trim_end_matches('/').to_string(),
        })
    }

    /// The rest of `url`'s path after this base, if `url` lies under it.
    fn remainder<'u>(&self, url: &'u Url) -> Option<&'u str> {
        let same_origin = url.scheme() == self.scheme
            && url.host_str().map(str::to_ascii_lowercase).as_deref() == Some(self.host.as_str())
            && url.port_or_known_default() == self.port;
        if !same_origin {
            return None;
        }
        let rest = url.path().strip_prefix(self.path.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }
}

/// Rewrites links under any of its bases to a public base URL.
#[derive(Debug, Clone, Default)]
pub struct LinkRewriter {
    bases: Vec<Base>,
}

impl LinkRewriter {
    pub fn new<'a>(urls: impl IntoIterator<Item = &'a Url>) -> Self {
        let mut bases: Vec<Base> = urls.into_iter().filter_map(Base::new).collect();
        // Longest path first, so "http://h/image" wins over "http://h".
        bases.sort_by_key(|b| std::cmp::Reverse(b.path.len()));
        bases.dedup();
        LinkRewriter { bases }
    }

    /// The rewritten link, or `None` when `link` is relative, unparsable or elsewhere.
    pub fn rewrite(&self, link: &str, public: &Url) -> Option<String> {
        let url = Url::parse(link).ok()?;
        let rest = self.bases.iter().find_map(|b| b.remainder(&url))?;
        let mut out = public.clone();
        let prefix = public.path().trim_end_matches('/');
        out.set_path(&format!("{prefix}{rest}"));
        out.set_query(url.query());
        out.set_fragment(url.fragment());
        Some(out.to_string())
    }

    /// Rewrite every string in a JSON document; `None` if it is not JSON or nothing changed.
    pub fn rewrite_json(&self, body: &[u8], public: &Url) -> Option<Vec<u8>> {
        self.rewrite_version_document(body, public, &[])
    }

    /// As `rewrite_json`, and list the version ids `extra` in a version document that lacks
    /// them (the proxy's own cache API, v2.14+, behind an upstream that has its cache off).
    pub fn rewrite_version_document(
        &self,
        body: &[u8],
        public: &Url,
        extra: &[&str],
    ) -> Option<Vec<u8>> {
        let mut doc: serde_json::Value = serde_json::from_slice(body).ok()?;
        let rewritten = self.rewrite_value(&mut doc, public);
        let added = add_versions(&mut doc, extra);
        if !(rewritten || added) {
            return None;
        }
        serde_json::to_vec(&doc).ok()
    }

    fn rewrite_value(&self, value: &mut serde_json::Value, public: &Url) -> bool {
        match value {
            serde_json::Value::String(s) => match self.rewrite(s, public) {
                Some(new) => {
                    *s = new;
                    true
                }
                None => false,
            },
            serde_json::Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, v| self.rewrite_value(v, public) | changed),
            serde_json::Value::Object(map) => map
                .values_mut()
                .fold(false, |changed, v| self.rewrite_value(v, public) | changed),
            _ => false,
        }
    }
}

/// Version ids the proxy serves whatever the upstream lists: Glance's cache API (2.14-2.18).
pub const CACHE_API_VERSIONS: [&str; 5] = ["v2.18", "v2.17", "v2.16", "v2.15", "v2.14"];

/// Add the missing `ids` to `{"versions": [...]}` as SUPPORTED, with the links of its newest
/// v2 entry, keeping the list newest first as Glance does. Whether anything was added.
fn add_versions(doc: &mut serde_json::Value, ids: &[&str]) -> bool {
    let Some(versions) = doc
        .get_mut("versions")
        .and_then(serde_json::Value::as_array_mut)
    else {
        return false;
    };
    let minor = |v: &serde_json::Value| {
        v.get("id")
            .and_then(serde_json::Value::as_str)
            .and_then(|id| id.strip_prefix("v2."))
            .and_then(|m| m.parse::<u32>().ok())
    };
    let Some(links) = versions
        .iter()
        .filter(|v| minor(v).is_some())
        .max_by_key(|v| minor(v))
        .and_then(|v| v.get("links").cloned())
    else {
        return false; // no v2 entry to model the links on
    };
    let mut added = false;
    for id in ids {
        if !versions
            .iter()
            .any(|v| v.get("id").and_then(|i| i.as_str()) == Some(id))
        {
            versions.push(serde_json::json!({"id": id, "status": "SUPPORTED", "links": links}));
            added = true;
        }
    }
    if added {
        // Newest first (v2.N by N), anything else after, in its order.
        versions.sort_by_key(|v| std::cmp::Reverse(minor(v)));
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test url")
    }

    fn check(bases: &[&str], public: &str, link: &str, want: Option<&str>) {
        let urls: Vec<Url> = bases.iter().map(|b| url(b)).collect();
        let r = LinkRewriter::new(urls.iter());
        assert_eq!(r.rewrite(link, &url(public)).as_deref(), want, "{link}");
    }

    #[test]
    fn links() {
        let up = &["http://127.0.0.1:9292"];
        let p = "http://127.0.0.1:9393";
        check(
            up,
            p,
            "http://127.0.0.1:9292/v2/",
            Some("http://127.0.0.1:9393/v2/"),
        );
        check(
            up,
            p,
            "http://127.0.0.1:9292/v2/images/x?a=1",
            Some("http://127.0.0.1:9393/v2/images/x?a=1"),
        );
        check(
            up,
            p,
            "http://127.0.0.1:9292",
            Some("http://127.0.0.1:9393/"),
        );
        check(up, p, "http://127.0.0.1:9999/v2/", None);
        check(up, p, "https://127.0.0.1:9292/v2/", None);
        check(up, p, "/v2/images/x", None);
        check(up, p, "not a url", None);
        // Default ports and host case.
        check(
            &["http://Glance.example"],
            p,
            "http://glance.example:80/v2/",
            Some("http://127.0.0.1:9393/v2/"),
        );
        // Path prefixes on either side.
        check(
            &["http://ctl/image"],
            p,
            "http://ctl/image/v2/",
            Some("http://127.0.0.1:9393/v2/"),
        );
        check(&["http://ctl/image"], p, "http://ctl/imagex/v2/", None);
        check(&["http://ctl/image"], p, "http://ctl/v2/", None);
        check(
            up,
            "https://lb.example/glance/",
            "http://127.0.0.1:9292/v2/",
            Some("https://lb.example/glance/v2/"),
        );
        // Longest base wins.
        check(
            &["http://ctl", "http://ctl/image"],
            p,
            "http://ctl/image/v2/",
            Some("http://127.0.0.1:9393/v2/"),
        );
    }

    #[test]
    fn version_document() {
        let up = url("http://127.0.0.1:9292");
        let r = LinkRewriter::new([&up]);
        let doc = br#"{"versions": [{"id": "v2.18", "status": "CURRENT", "links": [{"rel": "self", "href": "http://127.0.0.1:9292/v2/"}]}, {"id": "v2.0", "status": "SUPPORTED", "links": [{"rel": "self", "href": "http://127.0.0.1:9292/v2/"}]}]}"#;
        let out = r
            .rewrite_json(doc, &url("http://proxy:9393"))
            .expect("changed");
        let text = String::from_utf8(out).expect("utf8");
        assert!(!text.contains("9292"), "{text}");
        assert_eq!(text.matches("http://proxy:9393/v2/").count(), 2);
        // Key order is kept (preserve_order), so the document reads as Glance wrote it.
        assert!(
            text.starts_with(r#"{"versions":[{"id":"v2.18","status":"CURRENT""#),
            "{text}"
        );
        assert_eq!(r.rewrite_json(b"{\"a\": \"b\"}", &url("http://p")), None);
        assert_eq!(
            r.rewrite_version_document(b"{\"a\": \"b\"}", &url("http://p"), &CACHE_API_VERSIONS),
            None
        );
        assert_eq!(r.rewrite_json(b"<html>", &url("http://p")), None);
    }

    #[test]
    fn cache_api_versions_are_listed_when_missing() {
        let up = url("http://127.0.0.1:9292");
        let r = LinkRewriter::new([&up]);
        // Glance 33 with its cache off: v2.17 CURRENT, no 2.14, 2.16, 2.18.
        let doc = br#"{"versions": [{"id": "v2.17", "status": "CURRENT", "links": [{"rel": "self", "href": "http://127.0.0.1:9292/v2/"}]}, {"id": "v2.15", "status": "SUPPORTED", "links": [{"rel": "self", "href": "http://127.0.0.1:9292/v2/"}]}, {"id": "v2.0", "status": "SUPPORTED", "links": [{"rel": "self", "href": "http://127.0.0.1:9292/v2/"}]}]}"#;
        let out = r
            .rewrite_version_document(doc, &url("http://proxy:9393"), &CACHE_API_VERSIONS)
            .expect("changed");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        let ids: Vec<&str> = v["versions"]
            .as_array()
            .expect("list")
            .iter()
            .map(|e| e["id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids, ["v2.18", "v2.17", "v2.16", "v2.15", "v2.14", "v2.0"]);
        assert_eq!(
            v["versions"][1]["status"], "CURRENT",
            "the upstream's CURRENT stays"
        );
        assert_eq!(v["versions"][0]["status"], "SUPPORTED");
        for e in v["versions"].as_array().expect("list") {
            assert_eq!(e["links"][0]["href"], "http://proxy:9393/v2/");
        }
        // Nothing missing and nothing to rewrite: unchanged.
        let full = br#"{"versions": [{"id": "v2.18", "status": "CURRENT", "links": []}, {"id": "v2.17", "links": []}, {"id": "v2.16", "links": []}, {"id": "v2.15", "links": []}, {"id": "v2.14", "links": []}]}"#;
        assert_eq!(
            r.rewrite_version_document(full, &url("http://p"), &CACHE_API_VERSIONS),
            None
        );
    }
}
