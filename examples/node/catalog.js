// Accrue's CatalogService called directly over gRPC from Node, no generated code:
// the protos are loaded at run time with the documented include directories, the call
// carries the merchant's token as metadata, and an error's stable reason is decoded from
// the google.rpc.Status in its `grpc-status-details-bin` trailer.
//
//   make protos-deps                                  # lays out .build/protodeps/
//   (cd examples/node && npm ci)
//   source .accrue/run.env                            # ACCRUE_CATALOG_ADDR=127.0.0.1:<port>
//   ACCRUE_MERCHANT_TOKEN=$(accrue token ...) node examples/node/catalog.js "My product"
//
// Prints one JSON line per step: the created product, the listed page, and the decoded
// error of a GetProduct for an id that does not exist (reason PRODUCT_NOT_FOUND).
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

// How a call proves its merchant: `authorization: Bearer <merchant token>` metadata.
const MERCHANT_METADATA_KEY = process.env.ACCRUE_MERCHANT_METADATA_KEY || "authorization";
const merchantMetadataValue = (token) => (MERCHANT_METADATA_KEY === "authorization" ? `Bearer ${token}` : token);

const ROOT = path.resolve(__dirname, "..", "..");
// the include directories: Accrue's protos, and the google/api, google/rpc and
// google/protobuf protos that `make protos-deps` lays out from the pinned wheels
const INCLUDE_DIRS = [
  process.env.ACCRUE_PROTOS_DIR || path.join(ROOT, "protos"),
  process.env.ACCRUE_PROTODEPS_DIR || path.join(ROOT, ".build", "protodeps"),
];

function loadCatalog() {
  const definition = protoLoader.loadSync("accrue/catalog/v1/catalog_service.proto", {
    includeDirs: INCLUDE_DIRS,
    keepCase: true, // field names as in the protos (merchant_id), not camelCase
    longs: String, // int64 as strings: money and counts never become floats
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).accrue.catalog.v1.CatalogService;
}

// google.rpc.Status and its details (ErrorInfo carries the stable UPPER_SNAKE reason,
// BadRequest the offending field), from the same include directories
const rpcTypes = (() => {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => {
    for (const dir of INCLUDE_DIRS) {
      const candidate = path.join(dir, target);
      if (require("node:fs").existsSync(candidate)) return candidate;
    }
    return target;
  };
  root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]);
  return {
    Status: root.lookupType("google.rpc.Status"),
    byUrl: (typeUrl) => root.lookupType(typeUrl.slice(typeUrl.lastIndexOf("/") + 1)),
  };
})();

// An error's code, message and decoded details (ErrorInfo.reason is what to branch on).
function decodeError(err) {
  const out = { code: grpc.status[err.code], message: err.details, reason: null, details: [] };
  const [bin] = err.metadata ? err.metadata.get("grpc-status-details-bin") : [];
  if (!bin) return out;
  const status = rpcTypes.Status.decode(bin);
  for (const any of status.details) {
    const type = rpcTypes.byUrl(any.type_url || any.typeUrl);
    const detail = type.toObject(type.decode(any.value), { defaults: false });
    out.details.push({ type: type.fullName.replace(/^\./, ""), ...detail });
    if (type.fullName === ".google.rpc.ErrorInfo") out.reason = detail.reason;
  }
  return out;
}

function call(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + 5000 }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

async function main() {
  const address = process.env.ACCRUE_CATALOG_ADDR;
  const token = process.env.ACCRUE_MERCHANT_TOKEN;
  if (!address || !token) {
    console.error("set ACCRUE_CATALOG_ADDR (host:port, see .accrue/run.env) and ACCRUE_MERCHANT_TOKEN");
    return 2;
  }
  const CatalogService = loadCatalog();
  // plaintext in the local mesh; with ACCRUE_TLS_* (mTLS) use grpc.credentials.createSsl(ca, key, cert)
  const client = new CatalogService(address, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  metadata.set(MERCHANT_METADATA_KEY, merchantMetadataValue(token));
  try {
    const name = process.argv[2] || "Node example product";
    const created = await call(client, "CreateProduct", { name, description: "created from Node" }, metadata);
    console.log(JSON.stringify({ step: "created", product: created }));
    const page = await call(client, "ListProducts", { limit: 100 }, metadata);
    console.log(JSON.stringify({ step: "listed", ids: page.data.map((p) => p.id), names: page.data.map((p) => p.name) }));
    try {
      await call(client, "GetProduct", { id: "prod_doesnotexist" }, metadata);
      console.log(JSON.stringify({ step: "error", error: null }));
    } catch (err) {
      console.log(JSON.stringify({ step: "error", error: decodeError(err) }));
    }
    return 0;
  } catch (err) {
    console.error(JSON.stringify({ step: "failed", error: decodeError(err) }));
    return 1;
  } finally {
    client.close();
  }
}

main().then((code) => {
  process.exitCode = code;
});
