//! Fuzz target: the configuration file (TOML -> validated `Config`); every error must be a
//! `ConfigError` naming the file, and a config that validates must survive its own
//! `--check-config` rendering.
#![no_main]

use glance_cache_proxy::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml_str(text, "fuzz.toml") {
        Ok(config) => {
            let rendered = config.to_toml();
            let again = Config::from_toml_str(&rendered, "rendered.toml")
                .unwrap_or_else(|e| panic!("the effective config does not parse: {e}\n{rendered}"));
            assert_eq!(again.to_toml(), rendered);
        }
        Err(e) => assert!(e.to_string().contains("fuzz.toml"), "{e}"),
    }
});
