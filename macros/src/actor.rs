//! `#[rustray::actor]` on an inherent impl block.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ImplItem, ImplItemFn, ItemImpl, LitStr, Type, Visibility};

use crate::util::{self, Errors, Param};

pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let imp: ItemImpl = match syn::parse2(item.clone()) {
        Ok(i) => i,
        Err(e) => {
            let e = syn::Error::new(
                e.span(),
                format!("#[rustray::actor] can only be applied to an inherent `impl Type {{ .. }}` block: {e}"),
            );
            return util::with_error(item, e);
        }
    };
    let mut errors = Errors::default();
    if !attr.is_empty() {
        errors.push(syn::Error::new_spanned(
            &attr,
            "#[rustray::actor] takes no options; set them per actor with `Type::options()`",
        ));
    }
    let extra = generate(&imp, &mut errors);
    // `#[rustray::method(..)]` is read here; the compiled impl goes without.
    let mut imp = imp;
    // An actor's `fn new()` is its remote constructor (`Type::remote()`):
    // a `Default` beside it would never be called, so clippy's advice to
    // add one does not apply.
    imp.attrs
        .push(syn::parse_quote!(#[allow(clippy::new_without_default)]));
    for item in &mut imp.items {
        if let ImplItem::Fn(f) = item {
            f.attrs.retain(|a| !is_method_attr(a));
        }
    }
    match errors.finish() {
        Ok(()) => quote!(#imp #extra),
        Err(e) => util::with_error(quote!(#imp), e),
    }
}

/// `#[rustray::method(..)]` (or `#[method(..)]` with it imported).
fn is_method_attr(a: &syn::Attribute) -> bool {
    let segs: Vec<String> = a
        .path()
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    matches!(
        segs.iter().map(String::as_str).collect::<Vec<_>>()[..],
        ["method"] | ["rustray", "method"]
    )
}

/// The `num_returns` of a method's `#[rustray::method(num_returns = N)]`
/// (1 without one).
fn method_num_returns(f: &ImplItemFn, errors: &mut Errors) -> usize {
    let mut n = 1;
    for a in f.attrs.iter().filter(|a| is_method_attr(a)) {
        let r = a.parse_nested_meta(|meta| {
            if meta.path.is_ident("num_returns") {
                let lit: syn::LitInt = meta.value()?.parse()?;
                let v: usize = lit.base10_parse()?;
                if v == 0 {
                    return Err(syn::Error::new_spanned(&lit, "`num_returns` must be at least 1"));
                }
                n = v;
                Ok(())
            } else {
                Err(meta.error(
                    "unknown `rustray::method` option; the only supported option is `num_returns = N`",
                ))
            }
        });
        errors.push_result(r);
    }
    n
}

struct Method {
    ident: Ident,
    vis: Visibility,
    params: Vec<Param>,
    ret: Option<Type>,
    cfgs: TokenStream,
    /// With `num_returns = N >= 2`: the returned tuple's element types,
    /// one object each.
    elems: Vec<Type>,
    /// Takes `&mut self` (cannot run on a threaded actor's shared state).
    mutable: bool,
}

/// True for `&mut self` (and `self: &mut Self`).
fn is_mut_self(arg: &FnArg) -> bool {
    let FnArg::Receiver(r) = arg else {
        return false;
    };
    matches!(util::peel(&r.ty), Type::Reference(rf) if rf.mutability.is_some())
}

/// Inside the generated `Methods` struct and free dispatch functions `Self`
/// means something else (or nothing), so it is replaced by the actor type.
fn replace_self(self_ty: &Type) -> impl FnMut(&mut Type) -> syn::Result<()> + '_ {
    move |t| {
        if let Type::Path(tp) = t {
            if tp.qself.is_none() && tp.path.is_ident("Self") {
                *t = self_ty.clone();
            }
        }
        Ok(())
    }
}

fn is_ref_self(arg: &FnArg) -> bool {
    let FnArg::Receiver(r) = arg else {
        return false;
    };
    // `r.ty` is filled for both `&self` and `self: &Self` forms.
    matches!(util::peel(&r.ty), Type::Reference(rf) if matches!(util::peel(&rf.elem), Type::Path(p) if p.qself.is_none() && p.path.is_ident("Self")))
}

fn reject_sig_features(f: &ImplItemFn, what: &str, errors: &mut Errors) {
    let sig = &f.sig;
    if let Some(t) = &sig.asyncness {
        errors.push(syn::Error::new_spanned(
            t,
            format!("async {what}s are not supported by rustray; actor calls run synchronously"),
        ));
    }
    if let Some(t) = &sig.unsafety {
        errors.push(syn::Error::new_spanned(
            t,
            format!("unsafe {what}s cannot be called remotely by rustray"),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            format!("generic {what}s are not supported by rustray: each needs one concrete signature (make it non-`pub` to keep it local)"),
        ));
    }
    if let Some(v) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            v,
            format!("variadic {what}s are not supported by rustray"),
        ));
    }
}

fn generate(imp: &ItemImpl, errors: &mut Errors) -> TokenStream {
    if let Some((_, path, _)) = &imp.trait_ {
        errors.push(syn::Error::new_spanned(
            path,
            "#[rustray::actor] must be placed on the inherent impl block (`impl Type { .. }`), not on a trait impl",
        ));
        return TokenStream::new();
    }
    if !imp.generics.params.is_empty() || imp.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &imp.generics,
            "generic actors are not supported by rustray: an actor class is registered under one concrete type",
        ));
        return TokenStream::new();
    }
    let self_ty = &*imp.self_ty;
    let type_ident = match util::peel(self_ty) {
        Type::Path(tp)
            if tp.qself.is_none() && tp.path.segments.iter().all(|s| s.arguments.is_none()) =>
        {
            match tp.path.segments.last() {
                Some(seg) => seg.ident.clone(),
                None => return TokenStream::new(),
            }
        }
        _ => {
            errors.push(syn::Error::new_spanned(
                self_ty,
                "#[rustray::actor] needs a plain, non-generic type such as `impl Counter { .. }`",
            ));
            return TokenStream::new();
        }
    };
    let type_name = type_ident.unraw().to_string();
    let mut rewrite = replace_self(self_ty);

    let mut ctor: Option<Vec<Param>> = None;
    let mut methods: Vec<Method> = Vec::new();
    for item in &imp.items {
        let ImplItem::Fn(f) = item else { continue };
        let name = f.sig.ident.unraw().to_string();
        let receiver = f
            .sig
            .inputs
            .first()
            .filter(|a| matches!(a, FnArg::Receiver(_)));
        if name == "remote" || name == "options" {
            errors.push(syn::Error::new_spanned(
                &f.sig.ident,
                format!("#[rustray::actor] generates `{type_name}::{name}`; rename this function"),
            ));
            continue;
        }
        if name == "new" {
            if let Some(r) = receiver {
                errors.push(syn::Error::new_spanned(
                    r,
                    "the actor constructor `new` must be an associated function without `self`",
                ));
                continue;
            }
            reject_sig_features(f, "actor constructor", errors);
            let returns_self = match &f.sig.output {
                syn::ReturnType::Type(_, t) => match util::peel(t) {
                    Type::Path(tp) if tp.qself.is_none() => {
                        tp.path.is_ident("Self")
                            || tp.path.segments.last().map(|s| &s.ident) == Some(&type_ident)
                    }
                    _ => false,
                },
                syn::ReturnType::Default => false,
            };
            if !returns_self {
                errors.push(syn::Error::new_spanned(
                    &f.sig,
                    format!("the actor constructor `new` must return `Self` (or `{type_name}`)"),
                ));
            }
            ctor = Some(util::collect_params(&f.sig.inputs, &mut rewrite, errors));
            continue;
        }
        // Only `pub` methods borrowing the state are remote: private helpers
        // and consuming methods (`self`) stay local, which is also the
        // escape hatch for signatures rustray cannot ship across processes.
        if matches!(f.vis, Visibility::Inherited) || !receiver.is_some_and(is_ref_self) {
            continue;
        }
        reject_sig_features(f, "actor method", errors);
        let params = util::collect_params(&f.sig.inputs, &mut rewrite, errors);
        let mut ret = util::return_type(&f.sig.output);
        if let Some(t) = &mut ret {
            errors.push_result(util::walk_type(t, &mut |t| {
                util::check_return_type(t)?;
                rewrite(t)
            }));
        }
        let num_returns = method_num_returns(f, errors);
        let mut elems = Vec::new();
        if num_returns >= 2 {
            match ret.as_ref().map(util::peel) {
                Some(Type::Tuple(t)) if t.elems.len() == num_returns => {
                    elems = t.elems.iter().cloned().collect();
                }
                _ => errors.push(syn::Error::new_spanned(
                    &f.sig,
                    format!("`num_returns = {num_returns}` requires the method to return a tuple of {num_returns} elements"),
                )),
            }
        }
        let cfgs = util::cfg_attrs(&f.attrs);
        methods.push(Method {
            ident: f.sig.ident.clone(),
            vis: f.vis.clone(),
            params,
            ret,
            cfgs: quote!(#(#cfgs)*),
            elems,
            mutable: receiver.is_some_and(is_mut_self),
        });
    }
    let Some(ctor) = ctor else {
        errors.push(syn::Error::new_spanned(
            &imp.self_ty,
            "#[rustray::actor] needs a constructor in this impl block: `fn new(..) -> Self`",
        ));
        return TokenStream::new();
    };

    let impl_cfgs = util::cfg_attrs(&imp.attrs);
    let impl_cfgs = quote!(#(#impl_cfgs)*);
    let methods_struct = format_ident!("__rustray_{}_Methods", type_name);
    let unit: Type = syn::parse_quote!(());

    let wrappers = methods.iter().map(|m| {
        let Method { ident, vis, params, ret, cfgs, elems, .. } = m;
        let name = LitStr::new(&ident.unraw().to_string(), ident.span());
        let ret = ret.as_ref().unwrap_or(&unit);
        let publics = params.iter().map(|p| &p.public);
        let publics2 = params.iter().map(|p| &p.public);
        let tys = params.iter().map(|p| &p.ty);
        let tys2 = params.iter().map(|p| &p.ty);
        let doc = util::doc(format!(
            "Calls `{type_name}::{}` on the actor and returns a reference to its result without waiting. \
             Calls from one handle run in submission order.",
            ident.unraw()
        ));
        if !elems.is_empty() {
            let n = elems.len();
            return quote! {
                #cfgs
                #doc
                #vis fn #ident(&self, #(#publics: impl ::rustray::IntoArg<#tys>),*) -> (#(::rustray::ObjectRef<#elems>,)*) {
                    let __refs = self.core.call_n(
                        #name,
                        ::std::vec![#(::rustray::IntoArg::<#tys2>::into_arg(#publics2)),*],
                        #n,
                    );
                    let mut __refs = ::core::iter::IntoIterator::into_iter(__refs);
                    (#(
                        __refs
                            .next()
                            .expect("runtime returned num_returns refs")
                            .typed::<#elems>(),
                    )*)
                }
            };
        }
        quote! {
            #cfgs
            #doc
            #vis fn #ident(&self, #(#publics: impl ::rustray::IntoArg<#tys>),*) -> ::rustray::ObjectRef<#ret> {
                self.core.call::<#ret>(#name, ::std::vec![#(::rustray::IntoArg::<#tys2>::into_arg(#publics2)),*])
            }
        }
    });

    let arms: Vec<TokenStream> = methods.iter().map(|m| method_arm(m, self_ty)).collect();
    // Threaded actors run `&self` methods on shared state; a `&mut self`
    // method's call is refused there with a message saying why.
    let shared_arms = methods.iter().map(|m| {
        if !m.mutable {
            return method_arm(m, self_ty);
        }
        let Method { ident, cfgs, .. } = m;
        let name = LitStr::new(&ident.unraw().to_string(), ident.span());
        quote! {
            #cfgs
            #name => {
                return ::core::result::Result::Err(::rustray::__private::needs_exclusive(
                    <#self_ty as ::rustray::__private::ActorClass>::NAME,
                    __method,
                ))
            }
        }
    });
    let dispatch = dispatch_fn(
        quote!(__dispatch),
        quote!(&mut (dyn ::std::any::Any + ::core::marker::Send)),
        quote!(downcast_mut),
        self_ty,
        quote!(#(#arms)*),
    );
    let dispatch_shared = dispatch_fn(
        quote!(__dispatch_shared),
        quote!(&(dyn ::std::any::Any + ::core::marker::Send + ::core::marker::Sync)),
        quote!(downcast_ref),
        self_ty,
        quote!(#(#shared_arms)*),
    );

    let ctor_publics: Vec<&Ident> = ctor.iter().map(|p| &p.public).collect();
    let ctor_tys: Vec<&Type> = ctor.iter().map(|p| &p.ty).collect();
    let ctor_locals: Vec<&Ident> = ctor.iter().map(|p| &p.local).collect();
    let ctor_reads = ctor.iter().map(|p| {
        let (local, ty) = (&p.local, &p.ty);
        quote_spanned!(ty.span()=> let #local: #ty = __args.next::<#ty>()?;)
    });
    // CtorArgs shape: () / T / (A, B, ..) so that `ActorOptions::remote(x)`
    // reads naturally for the common single-argument case.
    let (ctor_args_ty, ctor_args_vec, ctor_pack) = match ctor.len() {
        0 => (quote!(()), quote!(::std::vec::Vec::new()), quote!(())),
        1 => {
            let t = ctor_tys[0];
            let p = ctor_publics[0];
            (
                quote!(#t),
                quote!(::std::vec![::rustray::IntoArg::<#t>::into_arg(__args)]),
                quote!(#p),
            )
        }
        _ => {
            let idx = (0..ctor.len()).map(syn::Index::from);
            let tys = &ctor_tys;
            (
                quote!((#(#ctor_tys,)*)),
                quote!(::std::vec![#(::rustray::IntoArg::<#tys>::into_arg(__args.#idx)),*]),
                quote!((#(#ctor_publics,)*)),
            )
        }
    };

    let name_suffix = LitStr::new(&format!("::{type_name}"), type_ident.span());
    let remote_doc = util::doc(format!(
        "Creates a `{type_name}` actor with default options by running `{type_name}::new` \
         on a worker; the handle's methods submit calls to it."
    ));
    let options_doc = util::doc(format!(
        "Starts a builder for creating a `{type_name}` actor with a name, restarts or resources."
    ));
    let struct_doc = util::doc(format!(
        "Remote methods of the `{type_name}` actor, reached through `ActorHandle<{type_name}>`."
    ));

    quote! {
        #impl_cfgs
        #struct_doc
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        pub struct #methods_struct {
            core: ::rustray::__private::ActorCore,
        }

        #impl_cfgs
        impl ::rustray::__private::ActorMethods for #methods_struct {
            fn from_core(core: ::rustray::__private::ActorCore) -> Self {
                #methods_struct { core }
            }
            fn core(&self) -> &::rustray::__private::ActorCore {
                &self.core
            }
        }

        #impl_cfgs
        #[allow(private_interfaces, private_bounds)]
        impl #methods_struct {
            #(#wrappers)*
        }

        #impl_cfgs
        #[allow(private_interfaces, private_bounds)]
        impl ::rustray::__private::ActorClass for #self_ty {
            const NAME: &'static str = ::core::concat!(::core::module_path!(), #name_suffix);
            type Methods = #methods_struct;
            type CtorArgs = #ctor_args_ty;
            fn ctor_args(__args: Self::CtorArgs) -> ::std::vec::Vec<::rustray::__private::Arg> {
                #ctor_args_vec
            }
        }

        #impl_cfgs
        #[allow(private_interfaces, private_bounds)]
        impl #self_ty {
            #remote_doc
            pub fn remote(#(#ctor_publics: #ctor_tys),*) -> ::rustray::Result<::rustray::ActorHandle<#self_ty>> {
                Self::options().remote(#ctor_pack)
            }

            #options_doc
            pub fn options() -> ::rustray::ActorOptions<#self_ty> {
                ::rustray::ActorOptions::new()
            }
        }

        #impl_cfgs
        const _: () = {
            fn __construct(
                __args: &mut ::rustray::__private::ArgReader<'_>,
            ) -> ::rustray::Result<::std::boxed::Box<dyn ::std::any::Any + ::core::marker::Send>> {
                #(#ctor_reads)*
                let __state: ::std::boxed::Box<dyn ::std::any::Any + ::core::marker::Send> =
                    ::std::boxed::Box::new(<#self_ty>::new(#(#ctor_locals),*));
                ::core::result::Result::Ok(__state)
            }

            #dispatch

            fn __share(
                __state: ::std::boxed::Box<dyn ::std::any::Any + ::core::marker::Send>,
            ) -> ::core::result::Result<
                ::std::sync::Arc<dyn ::std::any::Any + ::core::marker::Send + ::core::marker::Sync>,
                ::std::boxed::Box<dyn ::std::any::Any + ::core::marker::Send>,
            > {
                let __t = __state.downcast::<#self_ty>()?;
                #[allow(unused_imports)]
                use ::rustray::__private::{ShareNotSync as _, ShareSync as _};
                let __s = ::rustray::__private::Sharer(::core::cell::Cell::new(
                    ::core::option::Option::Some(*__t),
                ));
                (&__s).__rustray_share()
            }

            #dispatch_shared

            ::rustray::__private::inventory::submit! {
                ::rustray::__private::ActorClassEntry {
                    name: <#self_ty as ::rustray::__private::ActorClass>::NAME,
                    construct: __construct,
                    dispatch: __dispatch,
                    share: __share,
                    dispatch_shared: __dispatch_shared,
                }
            }
        };
    }
}

/// One method's arm of a dispatch `match`: decode its arguments, call it
/// on `__this`, push its result(s).
fn method_arm(m: &Method, self_ty: &Type) -> TokenStream {
    let Method {
        ident,
        params,
        ret,
        cfgs,
        elems,
        ..
    } = m;
    let name = LitStr::new(&ident.unraw().to_string(), ident.span());
    let reads = params.iter().map(|p| {
        let (local, ty) = (&p.local, &p.ty);
        quote_spanned!(ty.span()=> let #local: #ty = __args.next::<#ty>()?;)
    });
    let locals = params.iter().map(|p| &p.local);
    // Path call (not `__this.m()`) so a same-named trait method can never win.
    let call = quote!(<#self_ty>::#ident(__this, #(#locals),*));
    let push = match ret {
        None => quote!(#call; __ret.push(&())?;),
        Some(_) if !elems.is_empty() => {
            let pushes = elems.iter().enumerate().map(|(i, t)| {
                let idx = syn::Index::from(i);
                quote_spanned!(t.span()=> __ret.push(&__r.#idx)?;)
            });
            quote!(let __r = #call; #(#pushes)*)
        }
        Some(t) => quote_spanned!(t.span()=> let __r = #call; __ret.push(&__r)?;),
    };
    quote! {
        #cfgs
        #name => { #(#reads)* #push }
    }
}

/// A type-erased dispatch function `name(state, method, args)` over the
/// given `match` arms: the state is downcast (`downcast`: `downcast_mut`
/// or `downcast_ref`) to the actor type first.
fn dispatch_fn(
    name: TokenStream,
    state: TokenStream,
    downcast: TokenStream,
    self_ty: &Type,
    arms: TokenStream,
) -> TokenStream {
    quote! {
        #[allow(unused_mut, unreachable_code, unused_variables)]
        fn #name(
            __state: #state,
            __method: &str,
            __args: &mut ::rustray::__private::ArgReader<'_>,
        ) -> ::rustray::Result<::rustray::__private::Returns> {
            let __this = match __state.#downcast::<#self_ty>() {
                ::core::option::Option::Some(t) => t,
                ::core::option::Option::None => {
                    return ::core::result::Result::Err(::rustray::__private::wrong_actor_state(
                        <#self_ty as ::rustray::__private::ActorClass>::NAME,
                    ))
                }
            };
            let mut __ret = ::rustray::__private::Returns::new();
            match __method {
                #arms
                _ => {
                    return ::core::result::Result::Err(::rustray::__private::unknown_method(
                        <#self_ty as ::rustray::__private::ActorClass>::NAME,
                        __method,
                    ))
                }
            }
            ::core::result::Result::Ok(__ret)
        }
    }
}
