//! The README documents every option of the option table (so the docs cannot drift).

#[test]
fn readme_lists_every_option() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let missing: Vec<_> = wsrt::OPTIONS
        .iter()
        .filter(|o| {
            !readme.contains(&format!("| `{}` | `{}` |", o.name, o.default))
                && !readme.contains(&format!("| `{}` | *(empty)* |", o.name))
        })
        .map(|o| format!("{} (default {:?})", o.name, o.default))
        .collect();
    assert!(
        missing.is_empty(),
        "README option table lacks or misstates: {missing:?}"
    );
}
