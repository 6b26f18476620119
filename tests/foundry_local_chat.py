"""Runs inside a virtual environment with foundry-local-sdk (its onnxruntime pin differs
from edgeqwen's): registers or scans an exported model with Foundry Local's own native
runtime, offline, and answers one chat. Prints JSON for tests/test_export_foundry.py.

usage: python foundry_local_chat.py '{"mode": "register"|"scan", ...}'
"""

import json
import sys

from foundry_local_sdk import (
    CatalogType,
    ChatSession,
    Configuration,
    FoundryLocalManager,
    LogLevel,
    MessageItem,
    ModelInfoBuilder,
    Request,
    RequestOptions,
    SearchOptions,
    TextItem,
)

args = json.loads(sys.argv[1])
FoundryLocalManager.initialize(Configuration(
    app_name="edgeqwen_tests", app_data_dir=args["app_dir"], logs_dir=args["app_dir"],
    model_cache_dir=args["root"], log_level=LogLevel.INFORMATION,
    disable_nonessential_telemetry=True))
manager = FoundryLocalManager.instance
result = {}
if args["mode"] == "scan":
    # The public catalog scans model_cache_dir; it prints "Found N locally cached models".
    result["cached"] = [m.id for m in manager.get_catalog(CatalogType.PUBLIC).get_cached_models()]
else:
    catalog = manager.get_catalog(CatalogType.LOCAL)
    with ModelInfoBuilder() as metadata:
        metadata.set_string_property("task", "chat-completion")
        model = catalog.register_model(args["model_dir"], args["model_id"], metadata)
    result["models"] = [m.id for m in catalog.list_models()]
    result["context_length"] = model.info.context_length
    model.load()
    roles = {"system": MessageItem.system, "user": MessageItem.user}
    with ChatSession(model) as session:
        session.set_options(RequestOptions(search=SearchOptions(
            temperature=0.0, do_sample=False, max_output_tokens=args["max_tokens"])))
        request = Request()
        for message in args["messages"]:
            request.add_item(roles[message["role"]](message["content"]))
        texts = []
        with request, session.process_request(request) as response:
            for item in response:
                parts = item.parts if isinstance(item, MessageItem) else [item]
                texts += [p.text for p in parts if isinstance(p, TextItem)]
        result["reply"] = "".join(texts)
    model.unload()
print("RESULT " + json.dumps(result), flush=True)
