"""The two halves of diffusers' ``FluxAttnProcessor`` (diffusers 0.42), shared by the processors that change what
happens between them: the IP-Adapter's (adds the image-prompt branch) and OmniX's (joins keys and values across
the batch items). Kept to the letter of diffusers' processor, so that with nothing added the result is its own."""

from __future__ import annotations

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import _get_qkv_projections


def flux_qkv(attn, hidden_states, encoder_hidden_states=None, image_rotary_emb=None):
    """Projections, QK norm, the text tokens joined in front (double blocks) and RoPE: ``(query, key, value,
    image_query)`` in [batch, seq, heads, dim]; ``image_query`` is the image tokens' query after the norm, before
    RoPE and the join (where the IP-Adapter reads it)."""
    query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
        attn, hidden_states, encoder_hidden_states
    )
    query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
    key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
    value = value.unflatten(-1, (-1, attn.head_dim))
    image_query = query
    if attn.added_kv_proj_dim is not None:  # double blocks: text tokens first, as Flux does
        encoder_query = attn.norm_added_q(encoder_query.unflatten(-1, (-1, attn.head_dim)))
        encoder_key = attn.norm_added_k(encoder_key.unflatten(-1, (-1, attn.head_dim)))
        encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
        query = torch.cat([encoder_query, query], dim=1)
        key = torch.cat([encoder_key, key], dim=1)
        value = torch.cat([encoder_value, value], dim=1)
    if image_rotary_emb is not None:
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
    return query, key, value, image_query


def flux_out(attn, hidden_states, encoder_hidden_states=None, add=None):
    """After attention (``hidden_states`` flattened to [batch, seq, heads*dim]): a double block splits text from
    image tokens and projects both; a single block returns the whole sequence (``proj_out`` comes later).
    ``add`` joins the image tokens (double) or the whole sequence (single) before that."""
    if encoder_hidden_states is None:
        return hidden_states if add is None else hidden_states + add
    text_len = encoder_hidden_states.shape[1]
    encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
        [text_len, hidden_states.shape[1] - text_len], dim=1
    )
    if add is not None:
        hidden_states = hidden_states + add
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
    return hidden_states, attn.to_add_out(encoder_hidden_states.contiguous())
