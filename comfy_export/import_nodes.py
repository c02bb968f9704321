"""The ComfyUI node types the importer knows, by what it does with them: mapped to request fields, passed through
on the way to a loader or a prompt, safe to ignore (no effect on any output), or reported (named in the import's
warnings: on the path to an output, but the request has no field for what they do)."""

from __future__ import annotations

SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced", "SamplerCustom")
MODEL_PATCHES = {  # node -> the input its MODEL comes through
    "ModelSamplingAuraFlow": "model", "ModelSamplingSD3": "model", "ModelSamplingFlux": "model", "CFGNorm": "model",
    "LoraLoaderModelOnly": "model", "LoraLoader": "model", "ApplyIPAdapterFlux": "model",
    "ApplyIPAdapterFluxAdvanced": "model", "ApplyIPAdapterFluxChroma": "model",
    "ApplyIPAdapterFluxChromaAdvanced": "model", "NunchakuQwenImageLoraLoader": "model",
    "NunchakuQwenImageLoraStackV1": "model", "NunchakuQwenImageLoraStackV2": "model",
    "NunchakuQwenImageLoraStackV3": "model",
}
COND_PASS = {"FluxGuidance": "conditioning", "ReferenceLatent": "conditioning"}
CLIP_PASS = {"T5TokenizerOptions": "clip", "CLIPSetLastLayer": "clip", "LoraLoader": "clip"}
LATENT_PASS = {"LatentUpscaleBy": "samples", "LatentUpscale": "samples"}
IMAGE_PASS = {"ImageScaleToTotalPixels": "image", "ImageScale": "image", "ImageScaleBy": "image",
              "FluxKontextImageScale": "image"}
LOADERS = {"UNETLoader": "unet_name", "CheckpointLoaderSimple": "ckpt_name", "NunchakuQwenImageDiTLoader": "model_name"}
UNDERSTOOD = set(SAMPLERS) | set(MODEL_PATCHES) | set(COND_PASS) | set(CLIP_PASS) | set(LATENT_PASS) | set(
    IMAGE_PASS) | set(LOADERS) | {
    "DualCLIPLoader", "CLIPLoader", "VAELoader", "CLIPTextEncode", "CLIPTextEncodeFlux", "ConditioningZeroOut",
    "TextEncodeQwenImageEdit", "TextEncodeQwenImageEditPlus", "EmptySD3LatentImage", "EmptyLatentImage",
    "VAEDecode", "VAEEncode", "SaveImage", "PreviewImage", "LoadImage", "KSamplerSelect", "BasicScheduler",
    "RandomNoise", "CFGGuider", "BasicGuider", "IPAdapterFluxLoader", "IPAdapterFluxLoaderAdvanced",
    "IPAdapterFluxChromaLoader", "IPAdapterFluxChromaLoaderAdvanced", "SDNQSampler", "SDNQModelQuantizer",
    "OmniX_PanoPerception_Depth", "OmniX_PanoPerception_Normal", "OmniX_PanoPerception_PBR",
    "OmniX_PanoPerception_Semantic", "WanImageToVideo", "CreateVideo", "SaveVideo", "SaveWEBM", "SaveAnimatedWEBP",
    "TurboWanModelLoader", "TurboWanVAELoader", "TurboDiffusionI2VSampler", "TurboDiffusionSaveVideo",
    "PrimitiveInt", "PrimitiveFloat", "PrimitiveBoolean", "PrimitiveString", "PrimitiveStringMultiline",
    "ComfySwitchNode", "ComfyMathExpression",
}

#: nodes with no effect on what an output holds: notes, reroutes, previews, UI helpers
SAFE_TO_IGNORE = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode", "PreviewAny"}
#: node types known to ComfyUI and to this app's node definitions that no request field expresses: an import
#: that meets one on the path to an output names it (with its settings) in the warnings and imports the rest
REPORTED = {"BetaSamplingScheduler", "CLIPVisionEncode", "CLIPVisionLoader", "DisableNoise", "DualCFGGuider",
            "EmptyHunyuanLatentVideo", "GetVideoComponents", "ImageBatch", "ImageUpscaleWithModel",
            "Krea2ControlNetLoraLoader", "LoadImageMask", "LoadVideo", "NunchakuDepthPreprocessor",
            "NunchakuFluxDiTLoader", "NunchakuFluxIPAdapterApply", "NunchakuFluxLoraLoader", "NunchakuFluxLoraStack",
            "NunchakuFluxPuLIDApplyV2", "NunchakuIPAdapterLoader", "NunchakuModelMerger", "NunchakuPuLIDLoaderV2",
            "NunchakuPulidApply", "NunchakuPulidLoader", "NunchakuTextEncoderLoader", "NunchakuTextEncoderLoaderV2",
            "NunchakuWheelInstaller", "NunchakuZImageTurboLoraStackV1", "NunchakuZImageTurboLoraStackV4",
            "RepeatImageBatch", "SaveAnimatedPNG", "SDTurboScheduler", "StyleModelApply", "StyleModelLoader", "TripleCLIPLoader",
            "TurboWanSampler", "UpscaleModelLoader", "VAEDecodeTiled", "VAEEncodeTiled", "WanFirstLastFrameToVideo",
            "ControlNetLoader", "ControlNetApply", "ControlNetApplyAdvanced", "ControlNetApplySD3"}
