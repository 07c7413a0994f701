// Oracle for the Python reward tree: reads [[address, amount], ...] as JSON on stdin and prints
// the root and every proof built by @openzeppelin/merkle-tree's StandardMerkleTree.
import { StandardMerkleTree } from "@openzeppelin/merkle-tree";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const values = JSON.parse(input);
const tree = StandardMerkleTree.of(values, ["address", "uint256"]);
const proofs = {};
for (const [i, v] of tree.entries()) proofs[v[0]] = tree.getProof(i);
console.log(JSON.stringify({ root: tree.root, proofs }));
