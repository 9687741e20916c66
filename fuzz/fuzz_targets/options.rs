//! Option parsing from strings: `Options::set(name, value)` with names from `wsrt::OPTIONS`
//! and arbitrary UTF-8 values, as ws-echo flags, `WSRT_*` variables and the C ABI use it.
//!
//! Input: a list of `[sel, len, value[len]..]`. `sel` picks the option (`sel % (n + 1)`;
//! `n` = an unknown name made of the value itself); `sel & 0x80` spells the name
//! upper-case with dashes (`MAX-MESSAGE-SIZE`), which `set` must accept too.
//!
//! Checked: no panic; a refused value names the option, says why in one line and leaves the
//! option unchanged; after an accepted value, `get` returns text that `set` accepts again
//! and that gives the same `get` (so `get` is a canonical form), on this `Options` and on a
//! default one; the same value through `apply_env_from` behaves like `set`; `validate`,
//! `compression_config` and `effective_workers` never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsrt::{Options, OPTIONS};

fuzz_target!(|data: &[u8]| {
    let mut opts = Options::default();
    let mut rest = data;
    let mut ops = 0;
    while rest.len() >= 2 && ops < 32 {
        ops += 1;
        let (sel, len) = (rest[0], usize::from(rest[1]));
        let value_bytes = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        let value = String::from_utf8_lossy(value_bytes).into_owned();

        let idx = usize::from(sel & 0x7f) % (OPTIONS.len() + 1);
        let Some(spec) = OPTIONS.get(idx) else {
            // An arbitrary name: refused (or, by chance, a real one), never a panic.
            let _ = opts.set(&value, "1");
            let _ = opts.get(&value);
            continue;
        };
        let name = if sel & 0x80 != 0 {
            spec.name.replace('_', "-").to_ascii_uppercase()
        } else {
            spec.name.to_string()
        };
        let before = opts.get(&name).expect("a known option");
        assert_eq!(opts.get(spec.name).unwrap(), before);
        match opts.set(&name, &value) {
            Ok(()) => {
                let text = opts.get(spec.name).unwrap();
                let mut again = opts.clone();
                if let Err(e) = again.set(spec.name, &text) {
                    panic!(
                        "{}: {value:?} was accepted, but get's {text:?} is refused: {e}",
                        spec.name
                    );
                }
                assert_eq!(
                    again.get(spec.name).unwrap(),
                    text,
                    "{}: {value:?}",
                    spec.name
                );
                let mut fresh = Options::default();
                fresh
                    .set(spec.name, &value)
                    .expect("accepted on a default Options too");
                assert_eq!(
                    fresh.get(spec.name).unwrap(),
                    text,
                    "{}: {value:?}",
                    spec.name
                );
            }
            Err(e) => {
                assert_eq!(e.option, spec.name);
                let line = e.to_string();
                assert!(
                    !e.message.is_empty() && !line.contains(['\n', '\r']),
                    "{line:?}"
                );
                assert_eq!(
                    opts.get(spec.name).unwrap(),
                    before,
                    "a refused value changed {}",
                    spec.name
                );
            }
        }
        // The environment variable takes the same path.
        let mut env = Options::default();
        let var = spec.env_var();
        let by_env = env.apply_env_from(|k| (k == var).then(|| value.clone()));
        let mut direct = Options::default();
        assert_eq!(by_env.is_ok(), direct.set(spec.name, &value).is_ok());
        assert_eq!(env.get(spec.name).unwrap(), direct.get(spec.name).unwrap());
    }
    let _ = opts.validate();
    let _ = opts.compression_config();
    assert!(opts.effective_workers() >= 1);
});
