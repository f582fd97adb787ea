//! RFC 6962 / RFC 9162 Merkle trees over entry leaves: root, inclusion proof, proof check.
//!
//! Boundary: pure functions over 32-byte SHA-256 hashes. Leaf hash = `SHA-256(0x00 || data)`,
//! interior node = `SHA-256(0x01 || left || right)`, a tree of `n > 1` leaves splits at the largest
//! power of two smaller than `n`, and the empty tree's root is `SHA-256("")`.

use super::canon::sha256;
use sha2::{Digest, Sha256};

/// Longest inclusion proof accepted (a tree of 2^64 leaves has proofs of at most 64 hashes).
pub const MAX_PROOF_LEN: usize = 64;

/// Leaf hash of `data`: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// Interior node hash: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Largest power of two strictly smaller than `n` (`n >= 2`).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// Merkle tree hash of a list of leaf hashes (`MTH` in RFC 6962 §2.1).
pub fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves {
        [] => sha256(b""),
        [one] => *one,
        _ => {
            let (left, right) = leaves.split_at(split(leaves.len()));
            node_hash(&root(left), &root(right))
        }
    }
}

/// Audit path of leaf `index` (`PATH` in RFC 6962 §2.1.1), from the leaf's sibling up to the
/// root's child. Empty for a one-leaf tree, and for an `index` outside the tree (which then fails
/// [`verify_inclusion`]).
pub fn inclusion_proof(leaves: &[[u8; 32]], index: usize) -> Vec<[u8; 32]> {
    let mut proof = Vec::new();
    if index < leaves.len() {
        path(leaves, index, &mut proof);
    }
    proof
}

/// The audit paths of every leaf, in leaf order: `inclusion_proofs(l)[i] ==
/// inclusion_proof(l, i)`. Each subtree's root is hashed once (n - 1 node hashes in all), where
/// one [`inclusion_proof`] per leaf hashes about n each: a group's receipts cost n², not n.
pub fn inclusion_proofs(leaves: &[[u8; 32]]) -> Vec<Vec<[u8; 32]>> {
    let mut proofs = vec![Vec::new(); leaves.len()];
    if !leaves.is_empty() {
        paths(leaves, &mut proofs);
    }
    proofs
}

/// Appends to each leaf's path the siblings inside `leaves` (deepest first), and returns the
/// subtree's root.
fn paths(leaves: &[[u8; 32]], proofs: &mut [Vec<[u8; 32]>]) -> [u8; 32] {
    if let [one] = leaves {
        return *one;
    }
    let k = split(leaves.len());
    let (left_proofs, right_proofs) = proofs.split_at_mut(k);
    let left = paths(&leaves[..k], left_proofs);
    let right = paths(&leaves[k..], right_proofs);
    left_proofs.iter_mut().for_each(|p| p.push(right));
    right_proofs.iter_mut().for_each(|p| p.push(left));
    node_hash(&left, &right)
}

fn path(leaves: &[[u8; 32]], index: usize, proof: &mut Vec<[u8; 32]>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split(leaves.len());
    let (left, right) = leaves.split_at(k);
    if index < k {
        path(left, index, proof);
        proof.push(root(right));
    } else {
        path(right, index - k, proof);
        proof.push(root(left));
    }
}

/// Checks that `leaf_hash` is leaf `index` of a tree of `tree_size` leaves with root `root`
/// (RFC 9162 §2.1.3.2). `tree_size` is only bound by whoever signed the root together with it.
pub fn verify_inclusion(
    leaf_hash: [u8; 32],
    index: u64,
    tree_size: u64,
    proof: &[[u8; 32]],
    root: [u8; 32],
) -> bool {
    if index >= tree_size || proof.len() > MAX_PROOF_LEN {
        return false;
    }
    let (mut f_n, mut s_n) = (index, tree_size - 1);
    let mut r = leaf_hash;
    for p in proof {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<[u8; 32]> {
        (0..n).map(|i| leaf_hash(format!("leaf {i}").as_bytes())).collect()
    }

    /// Brute force: build the tree level by level, pairing neighbours and promoting an odd last
    /// node unchanged; record the sibling at each level as the proof.
    fn brute(leaves: &[[u8; 32]], index: usize) -> ([u8; 32], Vec<[u8; 32]>) {
        if leaves.is_empty() {
            return (sha256(b""), Vec::new());
        }
        let mut level = leaves.to_vec();
        let mut i = index;
        let mut proof = Vec::new();
        while level.len() > 1 {
            let sibling = i ^ 1;
            if sibling < level.len() {
                proof.push(level[sibling]);
            }
            level = level
                .chunks(2)
                .map(|c| if c.len() == 2 { node_hash(&c[0], &c[1]) } else { c[0] })
                .collect();
            i /= 2;
        }
        (level[0], proof)
    }

    #[test]
    fn matches_brute_force_for_every_size_and_index() {
        for n in 1..=40usize {
            let l = leaves(n);
            let r = root(&l);
            let all = inclusion_proofs(&l);
            assert_eq!(all.len(), n);
            for i in 0..n {
                let (br, bp) = brute(&l, i);
                assert_eq!(r, br, "root n={n}");
                let p = inclusion_proof(&l, i);
                assert_eq!(p, bp, "proof n={n} i={i}");
                assert_eq!(all[i], bp, "proofs n={n} i={i}");
                let (iu, nu) = (i as u64, n as u64);
                assert!(verify_inclusion(l[i], iu, nu, &p, r), "n={n} i={i}");
                // Wrong leaf, index, root, proof element, or proof length: all fail.
                assert!(!verify_inclusion(leaf_hash(b"other"), iu, nu, &p, r));
                for j in (0..n).filter(|&j| j != i) {
                    assert!(!verify_inclusion(l[i], j as u64, nu, &p, r), "n={n} i={i} j={j}");
                }
                assert!(!verify_inclusion(l[i], nu, nu, &p, r));
                let mut bad_root = r;
                bad_root[31] ^= 1;
                assert!(!verify_inclusion(l[i], iu, nu, &p, bad_root));
                for k in 0..p.len() {
                    let mut bad = p.clone();
                    bad[k][0] ^= 0x80;
                    assert!(!verify_inclusion(l[i], iu, nu, &bad, r), "n={n} i={i} k={k}");
                }
                let mut longer = p.clone();
                longer.push(r);
                assert!(!verify_inclusion(l[i], iu, nu, &longer, r));
                if !p.is_empty() {
                    assert!(!verify_inclusion(l[i], iu, nu, &p[..p.len() - 1], r));
                }
            }
            assert!(inclusion_proof(&l, n).is_empty());
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(
            hex::encode(root(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let l = leaves(3);
        assert_eq!(root(&l), node_hash(&node_hash(&l[0], &l[1]), &l[2]));
        assert_eq!(root(&l[..1]), l[0]);
        // Leaf and node hashing are domain separated.
        assert_ne!(leaf_hash(&[l[0], l[1]].concat()), node_hash(&l[0], &l[1]));
        assert!(!verify_inclusion(l[0], 0, 0, &[], l[0]));
        assert!(inclusion_proofs(&[]).is_empty());
        assert_eq!(inclusion_proofs(&l[..1]), vec![Vec::<[u8; 32]>::new()]);
    }
}
