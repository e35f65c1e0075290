//! Which modules of the decoder a PEFT LoRA config puts adapters on, and with which rank and alpha,
//! decided by PEFT's rules (`peft/tuners/tuners_utils.py`: `check_target_module_exists`,
//! `_maybe_include_all_linear_layers`; `peft/tuners/lora/config.py`: the checks of `__post_init__`;
//! `peft/utils/other.py`: `get_pattern_key`) over the module names transformers gives Llama, Qwen2
//! and Mistral (`model.layers.3.self_attn.q_proj`). The config decides, not the weights' keys: an
//! adapter has to mean here what it means to `PeftModel.from_pretrained`.
//!
//! Python's `re` and the `regex` crate agree on the patterns configs use (classes, alternation,
//! repetition, lazy quantifiers, named groups, with the same leftmost-first preference); a pattern
//! `regex` cannot compile (look-around, back-references) is refused, never approximated.

use regex::Regex;
use serde_json::Value;

use crate::model::lora::Target;

/// `target_modules` / `exclude_modules`: a string is a regex the whole module name must match
/// (`re.fullmatch`); a list names modules by their full name or a dotted suffix (`q_proj` names
/// `model.layers.0.self_attn.q_proj`).
enum Names {
    Pattern(Regex),
    List(Vec<String>),
}

/// How a name matched: a list entry equal to the full name bypasses `layers_to_transform`, as in
/// PEFT (only suffix matches are filtered by layer).
#[derive(PartialEq)]
enum Hit {
    No,
    Full,
    Suffix,
}

/// `re.fullmatch(pattern, key)` as a `regex` pattern: the whole alternation anchored.
fn full_match(pattern: &str, field: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        format!(
            "{field} {pattern:?} is not a regular expression wgspin can evaluate ({e}); \
             look-around and back-references are not supported: list the modules instead"
        )
    })
}

impl Names {
    /// `None` for a field PEFT treats as unset (null, `""`, `[]`).
    fn parse(v: &Value, field: &str) -> Result<Option<Self>, String> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) if s.is_empty() => Ok(None),
            Value::String(s) => full_match(s, field).map(|r| Some(Names::Pattern(r))),
            Value::Array(a) if a.is_empty() => Ok(None),
            Value::Array(a) => a
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(|l| Some(Names::List(l)))
                .ok_or_else(|| format!("{field} = {v}: expected a string or a list of strings")),
            _ => Err(format!(
                "{field} = {v}: expected a string or a list of strings"
            )),
        }
    }

    fn hit(&self, key: &str) -> Hit {
        match self {
            Names::Pattern(r) if r.is_match(key) => Hit::Full,
            Names::Pattern(_) => Hit::No,
            Names::List(l) if l.iter().any(|n| n == key) => Hit::Full,
            Names::List(l) if l.iter().any(|n| key.ends_with(&format!(".{n}"))) => Hit::Suffix,
            Names::List(_) => Hit::No,
        }
    }
}

/// `rank_pattern` / `alpha_pattern`: module patterns in file order, each matching a module whose
/// name is the pattern or ends with `.` + the pattern (`re.match(rf"(.*\.)?({key})$", name)`).
fn patterns(v: &Value, field: &str) -> Result<Vec<(Regex, f64)>, String> {
    let Some(map) = v.as_object() else {
        return match v {
            Value::Null => Ok(vec![]),
            _ => Err(format!(
                "{field} = {v}: expected an object of module → value"
            )),
        };
    };
    map.iter()
        .map(|(k, x)| {
            let value = x
                .as_f64()
                .filter(|x| *x > 0.0 && x.is_finite())
                .ok_or_else(|| format!("{field}[{k:?}] = {x}: expected a positive number"))?;
            let r = Regex::new(&format!("^(?:.*\\.)?(?:{k})$")).map_err(|e| {
                format!("{field} key {k:?} is not a regular expression wgspin can evaluate ({e})")
            })?;
            Ok((r, value))
        })
        .collect()
}

/// One module that carries the adapter: where, and its own rank and alpha.
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    pub layer: usize,
    pub target: Target,
    pub rank: usize,
    pub alpha: f64,
}

impl Chosen {
    /// `model.layers.L.self_attn.q_proj`: the module's name in the base model.
    pub fn name(&self) -> String {
        self.target.module_path(self.layer)
    }
}

/// The targeting fields of an `adapter_config.json`, parsed and checked.
pub struct Selection {
    target: Names,
    all_linear: bool,
    exclude: Option<Names>,
    /// `layers_to_transform`; `None` when unset or empty.
    layers: Option<Vec<u64>>,
    /// `layers_pattern`, each as PEFT builds it around the layer index; empty: PEFT's default, the
    /// first numbered segment after a dotted name (`model.layers.3.` → 3).
    layers_pattern: Vec<Regex>,
    rank: usize,
    alpha: f64,
    rank_pattern: Vec<(Regex, f64)>,
    alpha_pattern: Vec<(Regex, f64)>,
}

/// What PEFT's `"all-linear"` shorthand stands for (case-insensitively).
const ALL_LINEAR: &str = "all-linear";

impl Selection {
    /// Reads `target_modules`, `exclude_modules`, `layers_to_transform`, `layers_pattern`,
    /// `rank_pattern` and `alpha_pattern` of `cfg`, refusing the combinations PEFT refuses. Errors
    /// are messages naming the field (the caller names the file).
    pub fn from_config(cfg: &Value, rank: usize, alpha: f64) -> Result<Self, String> {
        let field = |k: &str| cfg.get(k).unwrap_or(&Value::Null);
        let tm = field("target_modules");
        let all_linear = tm
            .as_str()
            .is_some_and(|s| s.eq_ignore_ascii_case(ALL_LINEAR));
        let target = if all_linear {
            Names::List(vec![])
        } else {
            Names::parse(tm, "target_modules")?.ok_or_else(|| {
                format!(
                    "target_modules is {tm}: PEFT would fill in its default for the model type; \
                     write the modules the adapter was trained on (e.g. [\"q_proj\", \"v_proj\"])"
                )
            })?
        };
        let exclude = Names::parse(field("exclude_modules"), "exclude_modules")?;
        let (ltt, lp) = (field("layers_to_transform"), field("layers_pattern"));
        if tm.is_string() {
            for (k, v) in [("layers_to_transform", ltt), ("layers_pattern", lp)] {
                if !v.is_null() {
                    return Err(format!(
                        "{k} = {v} with a string target_modules {tm}: PEFT refuses this \
                         combination (`{k}` cannot be used when `target_modules` is a str)"
                    ));
                }
            }
        }
        let layers = match ltt {
            Value::Null => None,
            Value::Array(a) if a.is_empty() => None,
            Value::Array(a) => Some(
                a.iter()
                    .map(Value::as_u64)
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        format!("layers_to_transform = {ltt}: expected layer indices (integers)")
                    })?,
            ),
            v => Some(vec![v.as_u64().ok_or_else(|| {
                format!("layers_to_transform = {ltt}: expected an integer or a list of integers")
            })?]),
        };
        // PEFT falls back to its default for an unset or empty layers_pattern (None, "", []).
        let lp_list: Vec<&str> = match lp {
            Value::Null => vec![],
            Value::String(s) if s.is_empty() => vec![],
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a
                .iter()
                .map(Value::as_str)
                .collect::<Option<_>>()
                .ok_or_else(|| format!("layers_pattern = {lp}: expected strings"))?,
            _ => {
                return Err(format!(
                    "layers_pattern = {lp}: expected a string or a list"
                ));
            }
        };
        if !lp_list.is_empty() && ltt.is_null() {
            return Err(format!(
                "layers_pattern = {lp} without layers_to_transform: PEFT refuses this; set \
                 layers_to_transform to the layers the adapter is on, or remove layers_pattern"
            ));
        }
        let layers_pattern = lp_list
            .iter()
            .map(|p| {
                Regex::new(&format!(r"^(?:(?:^|.*?\.){p}\.(?P<idx>\d+)\.)")).map_err(|e| {
                    format!(
                        "layers_pattern {p:?} is not a regular expression wgspin can evaluate ({e})"
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            target,
            all_linear,
            exclude,
            layers,
            layers_pattern,
            rank,
            alpha,
            rank_pattern: patterns(field("rank_pattern"), "rank_pattern")?,
            alpha_pattern: patterns(field("alpha_pattern"), "alpha_pattern")?,
        })
    }

    /// The layer index PEFT reads from a module name for `layers_to_transform`.
    fn layer_index(&self, key: &str) -> Option<u64> {
        let default;
        let pats: &[Regex] = if self.layers_pattern.is_empty() {
            // PEFT's lazy `.*?` picks the first numbered segment, not a nested one.
            default = [Regex::new(r"^.*?\.[^.]*\.(?P<idx>\d+)\.").ok()?];
            &default
        } else {
            &self.layers_pattern
        };
        let caps = pats.iter().find_map(|r| r.captures(key))?;
        caps.name("idx")?.as_str().parse().ok()
    }

    /// Whether PEFT puts an adapter on the module `key` (`check_target_module_exists`).
    fn targets(&self, key: &str, is_linear: bool) -> bool {
        if self.exclude.as_ref().is_some_and(|e| e.hit(key) != Hit::No) {
            return false;
        }
        if self.all_linear {
            // Expanded to the full names of every linear module but the lm_head.
            return is_linear && key != "lm_head";
        }
        match self.target.hit(key) {
            Hit::No => false,
            Hit::Full => true,
            Hit::Suffix => match &self.layers {
                None => true,
                Some(want) => self.layer_index(key).is_some_and(|i| want.contains(&i)),
            },
        }
    }

    /// The first pattern's value that matches `key`, else `default` (`get_pattern_key`).
    fn pattern_value(pats: &[(Regex, f64)], key: &str, default: f64) -> f64 {
        pats.iter()
            .find(|(r, _)| r.is_match(key))
            .map_or(default, |(_, v)| *v)
    }

    /// The modules of a decoder with `layers` layers that carry the adapter, in the model's order.
    /// Refuses a selection PEFT would refuse (nothing matched, or a module LoRA does not wrap) or
    /// that wgspin cannot compute (LoRA on the embeddings or the lm_head).
    pub fn select(&self, layers: usize) -> Result<Vec<Chosen>, String> {
        let mut out = vec![];
        for (name, proj) in module_names(layers) {
            if !self.targets(&name, proj.is_some() || name == "lm_head") {
                continue;
            }
            let Some((layer, target)) = proj else {
                let why = match name.as_str() {
                    "lm_head" | "model.embed_tokens" => {
                        "LoRA on the embeddings or the lm_head is not supported"
                    }
                    _ => "it is not a linear layer (PEFT refuses it too)",
                };
                return Err(format!(
                    "target_modules selects the module {name}: {why}; wgspin puts LoRA on a \
                     decoder layer's q/k/v/o/gate/up/down_proj only, narrow target_modules"
                ));
            };
            let rank = Self::pattern_value(&self.rank_pattern, &name, self.rank as f64);
            if rank.fract() != 0.0 {
                return Err(format!(
                    "rank_pattern gives {name} the rank {rank}: expected an integer"
                ));
            }
            let alpha = Self::pattern_value(&self.alpha_pattern, &name, self.alpha);
            out.push(Chosen {
                layer,
                target,
                rank: rank as usize,
                alpha,
            });
        }
        if out.is_empty() {
            return Err(
                "target_modules (with exclude_modules and layers_to_transform) selects no module \
                 of the base model; PEFT refuses such an adapter too"
                    .into(),
            );
        }
        Ok(out)
    }
}

/// Every module name `named_modules()` lists for a Llama / Qwen2 / Mistral causal LM with
/// `layers` layers (the root left out, as PEFT skips it), each with the projection it is.
pub fn module_names(layers: usize) -> Vec<(String, Option<(usize, Target)>)> {
    let plain = |s: String| (s, None);
    let mut out = vec![
        plain("model".into()),
        plain("model.embed_tokens".into()),
        plain("model.layers".into()),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        out.push(plain(p.clone()));
        out.push(plain(format!("{p}.self_attn")));
        for t in &Target::ALL[..4] {
            out.push((t.module_path(l), Some((l, *t))));
        }
        out.push(plain(format!("{p}.mlp")));
        for t in &Target::ALL[4..] {
            out.push((t.module_path(l), Some((l, *t))));
        }
        for m in ["mlp.act_fn", "input_layernorm", "post_attention_layernorm"] {
            out.push(plain(format!("{p}.{m}")));
        }
    }
    for m in ["model.norm", "model.rotary_emb", "lm_head"] {
        out.push(plain(m.into()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(cfg: Value) -> Result<Vec<String>, String> {
        let s = Selection::from_config(&cfg, 4, 8.0)?;
        Ok(s.select(3)?.iter().map(Chosen::name).collect())
    }

    #[test]
    fn lists_match_full_names_or_dotted_suffixes() {
        let got = names(json!({"target_modules": ["q_proj", "model.layers.2.mlp.up_proj"]}));
        let want = [
            "model.layers.0.self_attn.q_proj",
            "model.layers.1.self_attn.q_proj",
            "model.layers.2.self_attn.q_proj",
            "model.layers.2.mlp.up_proj",
        ];
        assert_eq!(got.unwrap(), want);
        // A suffix must end at a dot: "proj" alone names nothing.
        assert!(names(json!({"target_modules": ["proj"]})).is_err());
    }

    #[test]
    fn a_string_must_match_the_whole_name() {
        let got =
            names(json!({"target_modules": r"model\.layers\.1\..*_proj|.*\.2\.mlp\.down_proj"}));
        assert_eq!(got.unwrap().len(), 8);
        // `re.fullmatch`: a partial match is no match.
        assert!(names(json!({"target_modules": "q_proj"})).is_err());
        let err = names(json!({"target_modules": "(?=q).*"})).unwrap_err();
        assert!(
            err.contains("target_modules") && err.contains("look-around"),
            "{err}"
        );
    }

    #[test]
    fn layers_to_transform_filters_suffix_matches_only() {
        let cfg = json!({"target_modules": ["v_proj", "model.layers.0.self_attn.q_proj"],
                         "layers_to_transform": [2]});
        let want = [
            "model.layers.0.self_attn.q_proj",
            "model.layers.2.self_attn.v_proj",
        ];
        assert_eq!(names(cfg).unwrap(), want);
        let cfg = json!({"target_modules": ["down_proj"], "layers_to_transform": 1,
                         "layers_pattern": ["h", "layers"]});
        assert_eq!(names(cfg).unwrap(), ["model.layers.1.mlp.down_proj"]);
        // A pattern that names no segment of the model: no layer index, so nothing is targeted.
        let cfg = json!({"target_modules": ["down_proj"], "layers_to_transform": 1,
                         "layers_pattern": "h"});
        assert!(names(cfg).is_err());
    }

    #[test]
    fn peft_refusals_and_unsupported_modules_name_the_field() {
        for (cfg, field) in [
            (
                json!({"target_modules": ".*q_proj", "layers_to_transform": [1]}),
                "layers_to_transform",
            ),
            (
                json!({"target_modules": ["q_proj"], "layers_pattern": "layers"}),
                "layers_pattern",
            ),
            (json!({"target_modules": null}), "target_modules"),
            (json!({"target_modules": ["lm_head", "q_proj"]}), "lm_head"),
            (json!({"target_modules": ["mlp"]}), "model.layers.0.mlp"),
            (
                json!({"target_modules": ["q_proj"], "rank_pattern": {"q_proj": 2.5}}),
                "rank_pattern",
            ),
        ] {
            let err = names(cfg.clone()).unwrap_err();
            assert!(err.contains(field), "{cfg}: {err}");
        }
    }

    #[test]
    fn all_linear_exclusions_and_patterns() {
        let all = names(json!({"target_modules": "ALL-LINEAR"})).unwrap();
        assert_eq!(all.len(), 21);
        let cfg = json!({"target_modules": "all-linear", "exclude_modules": ".*mlp.*"});
        assert_eq!(names(cfg).unwrap().len(), 12);
        let cfg = json!({"target_modules": ["q_proj", "v_proj"],
                         "rank_pattern": {r"layers\.1\.self_attn\.q_proj": 2, "q_proj": 3},
                         "alpha_pattern": {"v_proj": 1.5}});
        let s = Selection::from_config(&cfg, 4, 8.0).unwrap();
        let got: Vec<(usize, f64)> = s
            .select(2)
            .unwrap()
            .iter()
            .map(|c| (c.rank, c.alpha))
            .collect();
        assert_eq!(got, [(3, 8.0), (4, 1.5), (2, 8.0), (4, 1.5)]);
    }
}
