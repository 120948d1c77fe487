//! `#[rustray::remote]` on a free function.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, LitInt, PathSegment, Type};

use crate::util::{self, Errors, Param};

pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            let e = syn::Error::new(
                e.span(),
                format!("#[rustray::remote] can only be applied to a free function: {e}"),
            );
            return util::with_error(item, e);
        }
    };
    match generate(attr, &func) {
        Ok(extra) => quote!(#func #extra),
        Err(e) => util::with_error(quote!(#func), e),
    }
}

fn parse_num_returns(attr: TokenStream) -> syn::Result<usize> {
    let mut num_returns: Option<usize> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("num_returns") {
            if num_returns.is_some() {
                return Err(meta.error("duplicate `num_returns`"));
            }
            let lit: LitInt = meta.value()?.parse()?;
            let n: usize = lit.base10_parse()?;
            if n == 0 {
                return Err(syn::Error::new_spanned(
                    &lit,
                    "`num_returns` must be at least 1",
                ));
            }
            num_returns = Some(n);
            Ok(())
        } else {
            Err(meta.error(
                "unknown `rustray::remote` option; the only supported option is `num_returns = N`",
            ))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok(num_returns.unwrap_or(1))
}

/// The companion module adds one level of nesting, so paths that were
/// relative to the user's module must be re-anchored, and a user type named
/// `Options` would otherwise be shadowed by the generated builder struct.
fn rescope(t: &mut Type) -> syn::Result<()> {
    let Type::Path(tp) = t else { return Ok(()) };
    if tp.qself.is_some() || tp.path.leading_colon.is_some() {
        return Ok(());
    }
    let Some(first) = tp.path.segments.first_mut() else {
        return Ok(());
    };
    let span = first.ident.span();
    if first.ident == "self" {
        first.ident = Ident::new("super", span);
    } else if first.ident == "super" || first.ident == "Options" {
        tp.path
            .segments
            .insert(0, PathSegment::from(Ident::new("super", span)));
    }
    Ok(())
}

fn generate(attr: TokenStream, func: &ItemFn) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let num_returns = errors.push_result(parse_num_returns(attr)).unwrap_or(1);
    let sig = &func.sig;

    // Each rejection below names the construct, because the alternative is a
    // confusing type error inside code the user never wrote.
    if let Some(t) = &sig.asyncness {
        errors.push(syn::Error::new_spanned(
            t,
            "async functions cannot be rustray remote functions; tasks run synchronously on a worker",
        ));
    }
    if let Some(t) = &sig.unsafety {
        errors.push(syn::Error::new_spanned(
            t,
            "unsafe functions cannot be rustray remote functions: the caller's safety obligations cannot be checked across processes",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "generic functions cannot be rustray remote functions: a task is registered under one name and needs one concrete signature",
        ));
    }
    if let Some(v) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            v,
            "variadic functions cannot be rustray remote functions",
        ));
    }
    for arg in &sig.inputs {
        if let FnArg::Receiver(r) = arg {
            errors.push(syn::Error::new_spanned(
                r,
                "#[rustray::remote] is for free functions; for methods with `self` use #[rustray::actor] on the impl block",
            ));
        }
    }

    let params = util::collect_params(&sig.inputs, &mut rescope, &mut errors);

    let mut ret = util::return_type(&sig.output);
    if let Some(t) = &mut ret {
        errors.push_result(util::walk_type(t, &mut |t| {
            util::check_return_type(t)?;
            rescope(t)
        }));
    }
    // Element types of the returned tuple, one per ObjectRef, when N >= 2.
    let mut elems: Vec<Type> = Vec::new();
    if num_returns >= 2 {
        let tuple = ret.as_ref().map(util::peel);
        match tuple {
            Some(Type::Tuple(t)) if t.elems.len() == num_returns => {
                elems = t.elems.iter().cloned().collect();
            }
            _ => {
                let msg = format!(
                    "`num_returns = {num_returns}` requires the function to return a tuple of {num_returns} elements"
                );
                let err = match &sig.output {
                    syn::ReturnType::Type(_, t) => syn::Error::new_spanned(t, msg),
                    syn::ReturnType::Default => syn::Error::new_spanned(&sig.ident, msg),
                };
                errors.push(err);
            }
        }
    }
    errors.finish()?;

    Ok(emit(func, &params, ret.as_ref(), &elems, num_returns))
}

fn emit(
    func: &ItemFn,
    params: &[Param],
    ret: Option<&Type>,
    elems: &[Type],
    num_returns: usize,
) -> TokenStream {
    let vis = &func.vis;
    let name = &func.sig.ident;
    let name_str = name.unraw().to_string();
    let cfgs = util::cfg_attrs(&func.attrs);

    let locals: Vec<&Ident> = params.iter().map(|p| &p.local).collect();
    let publics: Vec<&Ident> = params.iter().map(|p| &p.public).collect();
    let tys: Vec<&Type> = params.iter().map(|p| &p.ty).collect();

    // Spanning the decode/encode calls at the user's types makes a missing
    // `Deserialize`/`Serialize` impl point at the offending type.
    let reads = params.iter().map(|p| {
        let (local, ty) = (&p.local, &p.ty);
        quote_spanned!(ty.span()=> let #local: #ty = __args.next::<#ty>()?;)
    });
    let call = quote!(super::#name(#(#locals),*));
    let pushes = match ret {
        None => quote!(#call; __ret.push(&())?;),
        Some(t) if num_returns == 1 => {
            // An `Err` from a function returning `Result` is an application
            // error (for `retry_exceptions`); the trait pair tells it apart
            // from any other type without naming it.
            quote_spanned!(t.span()=>
                let __r = #call;
                {
                    use ::rustray::__private::{IsAppError as _, NotAppError as _};
                    __ret.set_app_error((&__r).__rustray_is_app_error());
                }
                __ret.push(&__r)?;
            )
        }
        Some(_) => {
            let pushes = elems.iter().enumerate().map(|(i, t)| {
                let idx = syn::Index::from(i);
                quote_spanned!(t.span()=> __ret.push(&__r.#idx)?;)
            });
            quote!(let __r = #call; #(#pushes)*)
        }
    };

    let unit: Type = syn::parse_quote!(());
    let ret_ty = ret.unwrap_or(&unit);
    let (out_ty, build_out) = if num_returns == 1 {
        (
            quote!(::rustray::ObjectRef<#ret_ty>),
            quote!(__next().typed::<#ret_ty>()),
        )
    } else {
        (
            quote!((#(::rustray::ObjectRef<#elems>,)*)),
            quote!((#(__next().typed::<#elems>(),)*)),
        )
    };
    let n = LitInt::new(&num_returns.to_string(), Span::call_site());

    let mod_doc = util::doc(format!(
        "Task API for the remote function `{name_str}` (generated by `#[rustray::remote]`)."
    ));
    let remote_doc = util::doc(format!(
        "Submits `{name_str}` as a task with default options and returns a reference to its \
         result without waiting. Each argument may be a value or an `ObjectRef` to one. \
         Fails only when there is no runtime to submit to (before `rustray::init()`, or \
         after `shutdown()`); what the task itself meets is in its result."
    ));
    let options_doc = util::doc(format!(
        "Starts a builder for submitting `{name_str}` with explicit resources or retries."
    ));
    let struct_doc = util::doc(format!(
        "Per-call options for `{name_str}`; finish with `.remote(..)`."
    ));
    let opts_remote_doc = util::doc(format!(
        "Submits `{name_str}` with these options; see [`remote`](self::remote)."
    ));

    quote! {
        #(#cfgs)*
        #mod_doc
        #[allow(
            non_snake_case,
            non_camel_case_types,
            private_interfaces,
            private_bounds,
            unused_imports,
            dead_code
        )]
        #vis mod #name {
            // Argument and return types were written in the parent's scope.
            use super::*;

            fn __invoke(
                __args: &mut ::rustray::__private::ArgReader<'_>,
            ) -> ::rustray::Result<::rustray::__private::Returns> {
                #(#reads)*
                let mut __ret = ::rustray::__private::Returns::new();
                #pushes
                ::core::result::Result::Ok(__ret)
            }

            // `module_path!()` here ends in `::<fn name>`, which is unique per
            // function and identical in driver and worker (same binary).
            ::rustray::__private::inventory::submit! {
                ::rustray::__private::RemoteFunction {
                    name: ::core::module_path!(),
                    invoke: __invoke,
                }
            }

            #remote_doc
            pub fn remote(#(#publics: impl ::rustray::IntoArg<#tys>),*) -> ::rustray::Result<#out_ty> {
                // `self::` so that a parameter named `options` cannot shadow it.
                self::options().remote(#(#publics),*)
            }

            #options_doc
            pub fn options() -> Options {
                Options(::rustray::TaskOptions::new())
            }

            #struct_doc
            #[derive(::core::clone::Clone)]
            pub struct Options(::rustray::TaskOptions);

            impl Options {
                /// CPUs reserved for the task (default 1).
                pub fn num_cpus(self, n: f64) -> Self {
                    Options(self.0.num_cpus(n))
                }
                /// GPUs reserved for the task (default 0).
                pub fn num_gpus(self, n: f64) -> Self {
                    Options(self.0.num_gpus(n))
                }
                /// Amount of a custom resource reserved for the task.
                pub fn resource(self, name: &str, amount: f64) -> Self {
                    Options(self.0.resource(name, amount))
                }
                /// How many times the task is retried if its worker dies.
                pub fn max_retries(self, n: impl ::core::convert::Into<::rustray::Retries>) -> Self {
                    Options(self.0.max_retries(n))
                }
                /// Where the task runs (Ray's scheduling strategies).
                pub fn scheduling_strategy(self, s: ::rustray::SchedulingStrategy) -> Self {
                    Options(self.0.scheduling_strategy(s))
                }
                /// Ray's `retry_exceptions=True`: an `Err` returned by the
                /// function is retried within `max_retries`.
                pub fn retry_exceptions(self, on: bool) -> Self {
                    Options(self.0.retry_exceptions(on))
                }
                /// Ray's `retry_exceptions=[..]`: only the errors `retry`
                /// accepts are retried, within `max_retries` (the function
                /// must return `Result<T, E>`).
                pub fn retry_exceptions_if<__E>(
                    self,
                    retry: impl ::core::ops::Fn(&__E) -> bool + ::core::marker::Send + ::core::marker::Sync + 'static,
                ) -> Self
                where
                    #ret_ty: ::rustray::TaskResult<__E>,
                {
                    Options(self.0.retry_exceptions_filter(::std::sync::Arc::new(
                        move |__b: &[u8]| ::rustray::__private::error_matches::<#ret_ty, __E>(__b, &retry),
                    )))
                }
                /// Ray's `max_calls`: a worker exits after running this
                /// function this many times (0: no limit).
                pub fn max_calls(self, n: u32) -> Self {
                    Options(self.0.max_calls(n))
                }
                #opts_remote_doc
                pub fn remote(self, #(#publics: impl ::rustray::IntoArg<#tys>),*) -> ::rustray::Result<#out_ty> {
                    let __refs = ::rustray::__private::submit_task(
                        ::core::module_path!(),
                        &self.0,
                        ::std::vec![#(::rustray::IntoArg::<#tys>::into_arg(#publics)),*],
                        #n,
                    )?;
                    let mut __refs = ::core::iter::IntoIterator::into_iter(__refs);
                    let mut __next = move || {
                        __refs
                            .next()
                            .expect("runtime returned num_returns refs")
                    };
                    ::core::result::Result::Ok(#build_out)
                }
            }
        }
    }
}
