//! One declaration per resource type: the [`resource!`](macro@crate::resource) macro and what
//! its expansion calls.
//!
//! A resource type is spelled in four places if written by hand: the schema, the
//! builder's setters, the typed handle's outputs and the provider's reading of its
//! inputs. `resource!` takes one declaration of each property, with its type, its doc and
//! its schema flags, and yields all four: the `static` [`ResourceType`](crate::ResourceType),
//! the builder (one setter per input), the typed handle (one method per output) and a
//! typed inputs struct (serde) that the provider reads with `from_props` and writes its
//! read-back with `to_props`.
//!
//! Why a `macro_rules!` and not a derive: a derive needs a proc-macro crate (and `syn`)
//! compiled before anything else, on every cold build, for what is a fixed, flat grammar;
//! `macro_rules!` expands in the crate that uses it, with no extra dependency, and
//! rustdoc shows the generated setters with their docs all the same.

use cairn_state::Props;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::provider::ProviderError;

/// A kind's typed inputs from the props the engine hands its provider. A mismatch means
/// state was written by another version or edited by hand: a refusal that says so.
#[doc(hidden)]
pub fn inputs_from_props<T: DeserializeOwned>(token: &str, props: &Props) -> Result<T, ProviderError> {
    serde_json::from_value(props.to_value()).map_err(|e| {
        ProviderError::failed(format!(
            "the inputs held for this {token} do not fit its schema ({e}); was the state edited by hand? Run `cairn refresh` to read them from the cloud again"
        ))
    })
}

/// A kind's typed inputs as props: what a read-back reports.
#[doc(hidden)]
pub fn inputs_to_props<T: Serialize>(inputs: &T) -> Props {
    // A struct of options of plain data serializes to a JSON object; anything else is a
    // bug in the declaration, not a condition to handle.
    let value = serde_json::to_value(inputs).expect("typed inputs serialize to JSON");
    Props::from_value(value).expect("typed inputs serialize to a JSON object")
}

/// Declares a resource type once: its schema, builder, typed handle and typed inputs.
///
/// ```
/// use cairn_sdk::schema::Default;
/// use cairn_sdk::{CheckFailure, Decl, Tags};
///
/// cairn_sdk::resource! {
///     /// A bucket: `Bucket::new("logs").versioned(true)`.
///     pub struct Bucket {
///         token: "demo:storage:Bucket",
///         schema: BUCKET,
///         inputs: BucketInputs,
///         /// A declared bucket's outputs.
///         handle: BucketRef,
///         validate: validate,
///     }
///     inputs {
///         /// The bucket's name; generated when unset (forces replacement).
///         name: String = auto_name().forces_replacement(),
///         /// Keep every version of each object (default off).
///         versioned: bool = default(Default::Bool(false)),
///         /// Tags of your own.
///         tags: Tags,
///     }
///     outputs {
///         /// The bucket's ARN.
///         arn: String,
///     }
///     echoes {
///         /// The bucket's name.
///         name: String,
///     }
/// }
///
/// fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
///     if decl.value("name").and_then(|v| v.as_str()).is_some_and(|n| n.contains('_')) {
///         out.push(CheckFailure::new("name", decl.value("name"), "have no underscore"));
///     }
/// }
///
/// let bucket = Bucket::new("logs").versioned(true).tags([("team", "shop")]);
/// assert_eq!(BUCKET.token, "demo:storage:Bucket");
/// # let _ = bucket;
///
/// // A provider reads its inputs typed, and reports a read-back the same way.
/// let mut props = cairn_sdk::Props::new();
/// props.insert("versioned", serde_json::json!(true));
/// let inputs = BucketInputs::from_props(&props).unwrap();
/// assert_eq!(inputs.versioned, Some(true));
/// assert_eq!(inputs.to_props(), props);
/// ```
///
/// The sections, in this order:
///
/// - the builder's header: its type token, the names of the schema `static`, the inputs
///   struct and the handle, and an optional `validate` function (see
///   [`ResourceType::with_validation`](crate::ResourceType::with_validation));
/// - `inputs`: each property's name, type and schema flags (the chain of
///   [`Property`](crate::Property) methods after `=`); each gets a setter taking
///   `impl Into<Input<T>>`, a literal or another resource's output;
/// - `by_hand` (optional): inputs whose setters the builder writes itself, in its own
///   `impl` block, because they take a richer argument than one value;
/// - `outputs`: what the cloud computes, each a method on the handle;
/// - `echoes` (optional): inputs the handle exposes as outputs too.
///
/// The inputs struct has one `Option` field per input, so the code that uses it needs
/// `serde` among its dependencies.
#[macro_export]
macro_rules! resource {
    (
        $(#[$meta:meta])*
        $vis:vis struct $builder:ident {
            token: $token:literal,
            schema: $schema:ident,
            inputs: $inputs:ident,
            $(#[$hmeta:meta])*
            handle: $handle:ident,
            $( validate: $validate:path, )?
        }
        inputs {
            $( $(#[$imeta:meta])* $input:ident : $ity:ty $( = $if0:ident ( $($ia0:expr),* ) $( . $if:ident ( $($ia:expr),* ) )* )? ),* $(,)?
        }
        $( by_hand {
            $( $(#[$bmeta:meta])* $binput:ident : $bty:ty $( = $bf0:ident ( $($ba0:expr),* ) $( . $bf:ident ( $($ba:expr),* ) )* )? ),* $(,)?
        } )?
        outputs {
            $( $(#[$ometa:meta])* $output:ident : $oty:ty $( = $of0:ident ( $($oa0:expr),* ) $( . $of:ident ( $($oa:expr),* ) )* )? ),* $(,)?
        }
        $( echoes {
            $( $(#[$emeta:meta])* $echo:ident : $ety:ty ),* $(,)?
        } )?
    ) => {
        #[doc = concat!("The schema of `", $token, "`.")]
        $vis static $schema: $crate::ResourceType = $crate::ResourceType::new(
            $token,
            &[
                $( $crate::Property::input(stringify!($input)) $( .$if0($($ia0),*) $( .$if($($ia),*) )* )?, )*
                $($( $crate::Property::input(stringify!($binput)) $( .$bf0($($ba0),*) $( .$bf($($ba),*) )* )?, )*)?
                $( $crate::Property::output(stringify!($output)) $( .$of0($($oa0),*) $( .$of($($oa),*) )* )?, )*
            ],
        ) $( .with_validation($validate) )?;

        $(#[$meta])*
        #[derive(Debug, Clone)]
        $vis struct $builder($crate::Decl);

        impl $builder {
            #[doc = concat!("A `", $token, "` with logical name `name`.")]
            pub fn new(name: &str) -> Self {
                $builder($crate::Decl::new(&$schema, name))
            }

            $(
                $(#[$imeta])*
                #[must_use]
                pub fn $input(mut self, value: impl Into<$crate::Input<$ity>>) -> Self {
                    self.0.set::<$ity>(stringify!($input), value);
                    self
                }
            )*
        }

        $crate::impl_resource!($builder => $handle);

        $crate::typed_handle! {
            $(#[$hmeta])*
            $vis struct $handle {
                $( $(#[$ometa])* $output: $oty, )*
                $($( $(#[$emeta])* $echo: $ety, )*)?
            }
        }

        #[doc = concat!("The inputs of a `", $token, "`, typed: what its provider reads and reports.")]
        #[derive(Debug, Clone, Default, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(default)]
        $vis struct $inputs {
            $(
                $(#[$imeta])*
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $input: Option<$ity>,
            )*
            $($(
                $(#[$bmeta])*
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $binput: Option<$bty>,
            )*)?
        }

        impl $inputs {
            /// The inputs the engine hands the provider, typed.
            pub fn from_props(props: &$crate::Props) -> ::std::result::Result<Self, $crate::ProviderError> {
                $crate::declare::inputs_from_props($token, props)
            }

            /// These inputs as the engine records them.
            pub fn to_props(&self) -> $crate::Props {
                $crate::declare::inputs_to_props(self)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::schema::{Default, PropertyKind};
    use crate::{CheckFailure, Decl, Resource};

    use declared::*;

    mod declared {
        // Generated items this test does not all use, public in a private module.
        #![allow(dead_code, unreachable_pub)]
        use super::*;

        crate::resource! {
            /// A thing.
            pub struct Thing {
                token: "test:x:Thing",
                schema: THING,
                inputs: ThingInputs,
                handle: ThingRef,
                validate: validate,
            }
            inputs {
                size: u32 = required().forces_replacement(),
                zone: String = computed(),
                secret: String = secret(),
                on: bool = default(Default::Bool(true)),
            }
            by_hand {
                rules: Vec<String>,
            }
            outputs {
                id: String,
                version: u64 = changes_on_update(),
            }
            echoes {
                zone: String,
            }
        }

        fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
            if decl.value("size").and_then(serde_json::Value::as_u64) == Some(0) {
                out.push(CheckFailure::new("size", decl.value("size"), "be positive"));
            }
        }
    }

    #[test]
    fn one_declaration_yields_the_schema_with_every_flag() {
        let names: Vec<&str> = THING.properties.iter().map(|p| p.name).collect();
        assert_eq!(names, ["size", "zone", "secret", "on", "rules", "id", "version"]);
        let p = |n| THING.property(n).unwrap();
        assert!(p("size").required && p("size").forces_replacement);
        assert_eq!(p("zone").kind, PropertyKind::OptionalComputed);
        assert!(p("secret").secret);
        assert!(matches!(p("on").default, Some(Default::Bool(true))));
        assert_eq!(p("rules").kind, PropertyKind::Input);
        assert_eq!(p("id").kind, PropertyKind::Output);
        assert!(p("version").changes_on_update);
    }

    #[test]
    fn setters_set_the_declared_property_and_validation_runs() {
        let thing = Thing::new("t").size(0u32).zone("z-1").on(false);
        let decl = thing.decl();
        assert_eq!(decl.value("zone"), Some(&serde_json::json!("z-1")));
        assert_eq!(decl.value("on"), Some(&serde_json::json!(false)));
        let mut failures = Vec::new();
        (THING.validate)(decl, &mut failures);
        assert_eq!(failures.len(), 1, "{failures:?}");
    }

    #[test]
    fn typed_inputs_read_what_state_holds_and_refuse_what_does_not_fit() {
        let props = crate::Props::from_value(serde_json::json!({"size": 3, "rules": ["a"], "unknown": 1})).unwrap();
        let inputs = ThingInputs::from_props(&props).unwrap();
        assert_eq!((inputs.size, inputs.rules.as_deref()), (Some(3), Some(&["a".to_owned()][..])));
        assert_eq!(inputs.zone, None);
        let bad = crate::Props::from_value(serde_json::json!({"size": "three"})).unwrap();
        let err = ThingInputs::from_props(&bad).unwrap_err();
        assert!(err.to_string().contains("test:x:Thing"), "{err}");
    }
}
