//! Unit tests of `data_files.rs`: each way a dataset card or a repo's file names decide a split.

use super::*;

fn files(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

const ULTRACHAT: &str = "---\nlicense: mit\nconfigs:\n- config_name: default\n  data_files:\n  \
    - split: train_sft\n    path: data/train_sft-*\n  - split: test_sft\n    path: data/test_sft-*\n\
    dataset_info:\n  features:\n  - name: prompt\n    dtype: string\n---\n# UltraChat\n";

#[test]
fn the_cards_configs_decide_the_splits() {
    let repo = files(&[
        ".gitattributes",
        "README.md",
        "data/test_sft-00000-of-00001-aa.parquet",
        "data/train_sft-00001-of-00002-bb.parquet",
        "data/train_sft-00000-of-00002-cc.parquet",
    ]);
    let l = layout(&repo, Some(ULTRACHAT), None).unwrap();
    assert_eq!(l.subset.as_deref(), Some("default"));
    assert_eq!(l.names(), "train_sft, test_sft");
    let s = l.split(Some("train_sft")).unwrap();
    assert_eq!(
        s.files,
        [
            "data/train_sft-00000-of-00002-cc.parquet",
            "data/train_sft-00001-of-00002-bb.parquet"
        ]
    );
    let e = l.split(Some("train")).unwrap_err();
    assert!(e.contains("train_sft, test_sft"), "{e}");
    let e = l.split(None).unwrap_err();
    assert!(e.contains("--split"), "{e}");
    assert!(layout(&repo, Some(ULTRACHAT), Some("x")).is_err());
}

#[test]
fn subsets_the_default_flag_and_list_paths() {
    let card = "---\nconfigs:\n- config_name: qa\n  data_files: qa/*.jsonl\n- config_name: chat\n  \
        default: true\n  data_files:\n  - split: train\n    path: [chat/b.jsonl, chat/a.jsonl]\n  \
        - split: validation\n    path: chat/valid.jsonl\n---\n";
    let repo = files(&[
        "chat/a.jsonl",
        "chat/b.jsonl",
        "chat/valid.jsonl",
        "qa/1.jsonl",
        "qa/0.jsonl",
    ]);
    let l = layout(&repo, Some(card), None).unwrap();
    assert_eq!(l.subset.as_deref(), Some("chat"));
    // A list of paths keeps its order.
    assert_eq!(
        l.split(None).unwrap().files,
        ["chat/b.jsonl", "chat/a.jsonl"]
    );
    let l = layout(&repo, Some(card), Some("qa")).unwrap();
    assert_eq!(l.split(None).unwrap().files, ["qa/0.jsonl", "qa/1.jsonl"]);
    let e = layout(&repo, Some(card), Some("nope")).unwrap_err();
    assert!(e.contains("qa, chat"), "{e}");
}

#[test]
fn without_configs_the_file_names_decide() {
    let l = layout(
        &files(&[
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet",
            "data/test-00000-of-00001.parquet",
        ]),
        None,
        None,
    )
    .unwrap();
    assert_eq!(l.names(), "test, train");
    assert_eq!(l.split(None).unwrap().files.len(), 2);
    let l = layout(
        &files(&[
            "train.jsonl",
            "dev.jsonl",
            "notes.md",
            "my_training_set.jsonl",
        ]),
        Some("# no yaml"),
        None,
    )
    .unwrap();
    // `_` separates words too; each keyword's files in turn.
    assert_eq!(
        l.split(Some("train")).unwrap().files,
        ["train.jsonl", "my_training_set.jsonl"]
    );
    assert_eq!(l.split(Some("validation")).unwrap().files, ["dev.jsonl"]);
    let l = layout(&files(&["rows.jsonl"]), None, None).unwrap();
    assert_eq!(l.split(None).unwrap().files, ["rows.jsonl"]);
    let l = layout(&files(&["train.csv"]), None, None).unwrap();
    let e = l.split(None).unwrap_err();
    assert!(
        e.contains(".csv") && e.contains("@refs/convert/parquet:train"),
        "{e}"
    );
}

#[test]
fn the_hubs_parquet_conversion_has_subset_and_split_folders() {
    let repo = files(&[
        "default/train_sft/0001.parquet",
        "default/train_sft/0000.parquet",
        "default/test_sft/0000.parquet",
        "other/train/0000.parquet",
        ".gitattributes",
    ]);
    let l = converted_layout(&repo, None).unwrap();
    assert_eq!(l.subset.as_deref(), Some("default"));
    assert_eq!(
        l.split(Some("train_sft")).unwrap().files,
        [
            "default/train_sft/0000.parquet",
            "default/train_sft/0001.parquet"
        ]
    );
    let l = converted_layout(&repo, Some("other")).unwrap();
    assert_eq!(l.split(None).unwrap().files, ["other/train/0000.parquet"]);
    assert!(
        converted_layout(&repo, Some("x"))
            .unwrap_err()
            .contains("default, other")
    );
}

#[test]
fn a_folder_named_for_the_split_wins_over_the_other_folders() {
    let repo = files(&[
        "data/en/train.jsonl",
        "data/fr/train.jsonl",
        "data/en/test.jsonl",
        "valid/part-0.jsonl",
        "valid/README.md",
        "__pycache__/train.json",
    ]);
    let l = layout(&repo, None, None).unwrap();
    // The folder rule finds `valid/` and is used alone.
    assert_eq!(l.names(), "validation");
    assert_eq!(l.split(None).unwrap().files, ["valid/part-0.jsonl"]);
    let repo = files(&[
        "data/en/train.jsonl",
        "data/fr/train.jsonl",
        "data/en/test.jsonl",
    ]);
    let l = layout(&repo, None, None).unwrap();
    assert_eq!(l.names(), "train, test");
    assert_eq!(
        l.split(None).unwrap().files,
        ["data/en/train.jsonl", "data/fr/train.jsonl"]
    );
}

#[test]
fn a_split_keeps_the_files_its_reader_reads() {
    let card = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    \
        path: data/train/*\n  - split: test\n    path: [data/test.parquet]\n---\n";
    let repo = files(&[
        "data/train/0.parquet",
        "data/train/_SUCCESS",
        "data/train/README.md",
        "data/train/1.parquet",
        "data/test.parquet",
    ]);
    let l = layout(&repo, Some(card), None).unwrap();
    assert_eq!(
        l.split(None).unwrap().files,
        ["data/train/0.parquet", "data/train/1.parquet"]
    );
    // A path without wildcards must be there.
    let e = layout(&repo[..2], Some(card), None).unwrap_err();
    assert!(e.contains("data/test.parquet"), "{e}");
    // fsspec reads `**` inside a segment as `*`.
    let card = "---\nconfigs:\n- config_name: default\n  data_files: data/**.parquet\n---\n";
    let l = layout(
        &files(&["data/a.parquet", "data/b.parquet"]),
        Some(card),
        None,
    )
    .unwrap();
    assert_eq!(l.split(None).unwrap().files.len(), 2);
}

#[test]
fn deep_nesting_is_refused() {
    let mut card = "---\nconfigs: []\nx:\n".to_string();
    for i in 0..100 {
        card += &format!("{}- \n", "  ".repeat(i + 1));
    }
    card += "---\n";
    let e = configs(&card).unwrap_err();
    assert!(e.contains("deeper than 64"), "{e}");
}

#[test]
fn aliases_are_refused() {
    let card = "---\na: &x [1, 2]\nb: [*x, *x]\nconfigs: []\n---\n";
    assert!(configs(card).unwrap_err().contains("alias"));
}
