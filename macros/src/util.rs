//! Pieces shared by `#[remote]` and `#[actor]`: argument collection, type
//! checks/rewrites and error accumulation.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::punctuated::Punctuated;
use syn::token::Comma;
use syn::{Attribute, FnArg, GenericArgument, Ident, Pat, PathArguments, ReturnType, Type};

/// Gathers every problem in one expansion so the user sees all of them at
/// once instead of fixing them one compile at a time.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub fn push_result<T>(&mut self, r: syn::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(e);
                None
            }
        }
    }

    pub fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// One non-receiver parameter of a user function.
pub struct Param {
    /// Name shown in the generated public signatures: the user's identifier
    /// when the parameter is a plain binding, so rustdoc output reads naturally.
    pub public: Ident,
    /// Name used inside generated bodies. Always synthetic so a user parameter
    /// called e.g. `__args` or `__ret` cannot shadow generated locals.
    pub local: Ident,
    pub ty: Type,
}

/// Collects the non-receiver parameters. `rewrite` adapts each type to the
/// scope the generated code lives in (e.g. `Self` -> the actor type).
pub fn collect_params(
    inputs: &Punctuated<FnArg, Comma>,
    rewrite: &mut dyn FnMut(&mut Type) -> syn::Result<()>,
    errors: &mut Errors,
) -> Vec<Param> {
    let mut out = Vec::new();
    for (i, arg) in inputs.iter().enumerate() {
        let FnArg::Typed(pt) = arg else { continue };
        let public = match &*pt.pat {
            // `mut x` / `ref x` only affect the user's body; the wire value is the same.
            // The call-site span marks the binding as macro-generated, so lints
            // like `used_underscore_binding` do not fire for a user's `_x`.
            Pat::Ident(pi) if pi.subpat.is_none() => {
                let mut id = pi.ident.clone();
                id.set_span(Span::call_site());
                id
            }
            _ => format_ident!("__rustray_arg{}", i),
        };
        let mut ty = (*pt.ty).clone();
        let res = walk_type(&mut ty, &mut |t| {
            check_arg_type(t)?;
            rewrite(t)
        });
        errors.push_result(res);
        out.push(Param {
            public,
            local: format_ident!("__a{}", i),
            ty,
        });
    }
    out
}

/// Arguments cross a process boundary and are decoded with
/// `DeserializeOwned`, so borrowed and opaque types can never work; saying so
/// here beats a trait-bound error deep inside generated code.
fn check_arg_type(t: &Type) -> syn::Result<()> {
    match t {
        Type::ImplTrait(_) => Err(syn::Error::new_spanned(
            t,
            "`impl Trait` arguments are not supported by rustray; use a concrete type",
        )),
        Type::Reference(_) => Err(syn::Error::new_spanned(
            t,
            "rustray arguments are sent to another process and must be owned; \
             replace the reference with an owned type (e.g. `String`, `Vec<T>`)",
        )),
        _ => Ok(()),
    }
}

pub fn check_return_type(t: &Type) -> syn::Result<()> {
    match t {
        Type::ImplTrait(_) => Err(syn::Error::new_spanned(
            t,
            "`impl Trait` return types are not supported by rustray; the result is \
             serialized and typed as `ObjectRef<T>`, so `T` must be nameable",
        )),
        _ => Ok(()),
    }
}

/// `None` for functions returning `()`, so callers can push `&()` without
/// binding a unit value (avoids `let_unit_value` noise in expansions).
pub fn return_type(output: &ReturnType) -> Option<Type> {
    match output {
        ReturnType::Default => None,
        ReturnType::Type(_, ty) => match peel(ty) {
            Type::Tuple(t) if t.elems.is_empty() => None,
            _ => Some((**ty).clone()),
        },
    }
}

/// Strips parentheses and invisible groups (the latter appear when a type
/// comes through a `macro_rules!` fragment).
pub fn peel(mut t: &Type) -> &Type {
    loop {
        match t {
            Type::Paren(p) => t = &p.elem,
            Type::Group(g) => t = &g.elem,
            _ => return t,
        }
    }
}

/// Visits `ty` and every type nested in it (pre-order). Function-pointer and
/// trait-object types are not descended into: their inner types are never
/// values that we (de)serialize or resolve differently.
pub fn walk_type(
    ty: &mut Type,
    f: &mut dyn FnMut(&mut Type) -> syn::Result<()>,
) -> syn::Result<()> {
    f(ty)?;
    match ty {
        Type::Array(a) => walk_type(&mut a.elem, f),
        Type::Group(g) => walk_type(&mut g.elem, f),
        Type::Paren(p) => walk_type(&mut p.elem, f),
        Type::Ptr(p) => walk_type(&mut p.elem, f),
        Type::Reference(r) => walk_type(&mut r.elem, f),
        Type::Slice(s) => walk_type(&mut s.elem, f),
        Type::Tuple(t) => t.elems.iter_mut().try_for_each(|e| walk_type(e, f)),
        Type::Path(p) => {
            if let Some(q) = &mut p.qself {
                walk_type(&mut q.ty, f)?;
            }
            for seg in p.path.segments.iter_mut() {
                match &mut seg.arguments {
                    PathArguments::AngleBracketed(a) => {
                        for arg in a.args.iter_mut() {
                            match arg {
                                GenericArgument::Type(t) => walk_type(t, f)?,
                                GenericArgument::AssocType(at) => walk_type(&mut at.ty, f)?,
                                _ => {}
                            }
                        }
                    }
                    PathArguments::Parenthesized(p) => {
                        for t in p.inputs.iter_mut() {
                            walk_type(t, f)?;
                        }
                        if let ReturnType::Type(_, t) = &mut p.output {
                            walk_type(t, f)?;
                        }
                    }
                    PathArguments::None => {}
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `#[cfg]`s must follow the item into every generated companion, or a
/// cfg'd-out function would leave dangling references behind.
pub fn cfg_attrs(attrs: &[Attribute]) -> Vec<&Attribute> {
    attrs
        .iter()
        // `cfg_attr` is deliberately not copied: it can expand to arbitrary
        // attributes (derives, docs) that only make sense on the original item.
        .filter(|a| a.path().is_ident("cfg"))
        .collect()
}

/// Keeps the user's item in the output next to the error, so one mistake in
/// the attribute does not cascade into "cannot find function" errors elsewhere.
pub fn with_error(item: TokenStream, err: syn::Error) -> TokenStream {
    let err = err.to_compile_error();
    quote!(#item #err)
}

pub fn doc(text: String) -> TokenStream {
    let lit = syn::LitStr::new(&text, Span::call_site());
    quote!(#[doc = #lit])
}
