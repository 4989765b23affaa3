#!/usr/bin/env node
// Compiles contracts/src with the pinned solc-js and writes one JSON artifact per deployable
// contract to protocol/chain/abi/<Contract>.json, where the Python chain client loads them.
//
// Each artifact records `sourcesHash`: sha256 over every file under src/ and this script
// (sorted by relative path; each entry is `path \0 bytes \0`). tests/contracts/test_artifacts.py
// recomputes it without compiling, so a source edit without `npm run build` fails the tests.
// Settings mirror foundry.toml (optimizer 200 runs, EVM cancun) so forge tests what we ship.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const solc = require('solc');

const CONTRACTS_DIR = path.resolve(__dirname, '..');
const SRC_DIR = path.join(CONTRACTS_DIR, 'src');
const OUT_DIR = path.resolve(CONTRACTS_DIR, '..', 'protocol', 'chain', 'abi');
const DEPLOYABLE = ['ThinkMeshLedger', 'ThinkMeshToken'];
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: 'cancun',
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
};

function listFiles(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    return entry.isDirectory() ? listFiles(full) : [full];
  });
}

function relative(file) {
  return path.relative(CONTRACTS_DIR, file).split(path.sep).join('/');
}

function sourcesHash() {
  const files = [...listFiles(SRC_DIR), __filename].map(relative).sort();
  const hash = crypto.createHash('sha256');
  for (const rel of files) {
    hash.update(rel, 'utf8');
    hash.update(Buffer.from([0]));
    hash.update(fs.readFileSync(path.join(CONTRACTS_DIR, rel)));
    hash.update(Buffer.from([0]));
  }
  return hash.digest('hex');
}

function findImport(importPath) {
  for (const root of [CONTRACTS_DIR, path.join(CONTRACTS_DIR, 'node_modules')]) {
    const candidate = path.join(root, importPath);
    if (fs.existsSync(candidate)) return { contents: fs.readFileSync(candidate, 'utf8') };
  }
  return { error: `File not found: ${importPath}` };
}

function main() {
  const sources = {};
  for (const file of listFiles(SRC_DIR).filter((f) => f.endsWith('.sol'))) {
    sources[relative(file)] = { content: fs.readFileSync(file, 'utf8') };
  }
  const input = { language: 'Solidity', sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
  const errors = (output.errors || []).filter((e) => e.severity === 'error');
  for (const e of output.errors || []) process.stderr.write(`${e.formattedMessage || e.message}\n`);
  if (errors.length) {
    process.stderr.write(`export-artifacts: ${errors.length} compiler error(s)\n`);
    return 1;
  }

  const hash = sourcesHash();
  fs.mkdirSync(OUT_DIR, { recursive: true });
  for (const name of DEPLOYABLE) {
    const unit = output.contracts[`src/${name}.sol`];
    if (!unit || !unit[name]) throw new Error(`export-artifacts: no contract ${name} in src/${name}.sol`);
    const artifact = {
      contractName: name,
      sourcesHash: hash,
      compiler: { version: solc.version(), settings: { optimizer: SETTINGS.optimizer, evmVersion: SETTINGS.evmVersion } },
      abi: unit[name].abi,
      bytecode: `0x${unit[name].evm.bytecode.object}`,
      deployedBytecode: `0x${unit[name].evm.deployedBytecode.object}`,
    };
    const target = path.join(OUT_DIR, `${name}.json`);
    fs.writeFileSync(target, `${JSON.stringify(artifact, null, 1)}\n`);
    process.stdout.write(`wrote ${path.relative(process.cwd(), target)} (${artifact.bytecode.length / 2 - 1} bytes of init code)\n`);
  }
  return 0;
}

process.exitCode = main();
