// Compile fedmarket's contracts with the pinned solc-js (standard JSON, fixed EVM version and
// optimizer). Product contracts (src/) -> ../fedmarket/contracts/<Name>.json (package data);
// test and benchmark helpers (test/) -> test-artifacts/<Name>.json. Run: `npm run build`.
import { readFileSync, writeFileSync, mkdirSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const solc = require("solc");
const here = dirname(fileURLToPath(import.meta.url));

export const SETTINGS = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 20000 },
  viaIR: true,
  metadata: { bytecodeHash: "none" },
  remappings: ["@openzeppelin/=node_modules/@openzeppelin/"],
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

// `node build.mjs --out DIR` writes both groups under DIR instead (the artifact check uses it).
const outFlag = process.argv.indexOf("--out");
const outRoot = outFlag > 0 ? process.argv[outFlag + 1] : null;
const groups = [
  { folder: "src", out: outRoot ? join(outRoot, "product") : join(here, "..", "fedmarket", "contracts") },
  { folder: "test", out: outRoot ? join(outRoot, "helpers") : join(here, "test-artifacts") },
];

function findImports(path) {
  const candidates = [join(here, path), join(here, "node_modules", path)];
  for (const file of candidates) {
    try {
      return { contents: readFileSync(file, "utf8") };
    } catch {}
  }
  return { error: `not found: ${path}` };
}

const sources = {};
for (const { folder } of groups) {
  for (const name of readdirSync(join(here, folder)).filter((f) => f.endsWith(".sol")).sort()) {
    sources[`${folder}/${name}`] = { content: readFileSync(join(here, folder, name), "utf8") };
  }
}
const input = { language: "Solidity", sources, settings: SETTINGS };
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

for (const { folder, out } of groups) {
  mkdirSync(out, { recursive: true });
  for (const [source, contracts] of Object.entries(output.contracts)) {
    if (!source.startsWith(`${folder}/`)) continue;
    for (const [name, c] of Object.entries(contracts)) {
      const artifact = {
        contractName: name,
        sourceName: source,
        compiler: { version: solc.version(), settings: SETTINGS },
        abi: c.abi,
        bytecode: "0x" + c.evm.bytecode.object,
        deployedBytecode: "0x" + c.evm.deployedBytecode.object,
      };
      writeFileSync(join(out, `${name}.json`), JSON.stringify(artifact, null, 2) + "\n");
      console.log(`${join(out, name)}.json  ${c.evm.deployedBytecode.object.length / 2} bytes`);
    }
  }
}
