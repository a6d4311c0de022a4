//! The README's client flow is `examples/flow.rs`, which the build compiles: this test
//! keeps the two the same, so the README shows code that builds.

#[test]
fn the_readme_client_flow_is_the_compiled_example() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let example = std::fs::read_to_string(format!("{root}/client-sdk/examples/flow.rs"))
        .expect("examples/flow.rs");
    let section = readme
        .split("## A client flow with the SDK")
        .nth(1)
        .expect("the README's client flow section");
    let block = section
        .split("```rust,no_run\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a rust block in the section");
    // The example's header comment is not in the README.
    let code: Vec<&str> = example
        .lines()
        .skip_while(|l| l.starts_with("//!"))
        .collect();
    let code = code.join("\n");
    assert_eq!(
        block.trim(),
        code.trim(),
        "README.md and examples/flow.rs differ"
    );
}
